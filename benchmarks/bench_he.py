"""Case Study II (paper V-C, V-E): accuracy with the encryption interface (Table V), encrypted vs
plaintext inference time (Table VIII), and the cost of larger secret dimensions k.

Run:  .venv/bin/python benchmarks/bench_he.py table5   [--epochs 30] [--seed 0]
      .venv/bin/python benchmarks/bench_he.py table8   [--images 1000 10000] [--strategy matrix-pair-wise]
      .venv/bin/python benchmarks/bench_he.py security [--ks 1 16 64 256]
      .venv/bin/python benchmarks/bench_he.py all
The tests in tests/he/test_he_table5.py call `table5` with fewer epochs and images.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import torch

from coopml.data import TABLE_III, ShardSpec, load_dataset, make_shards
from coopml.fusion import FusionConfig, fuse
from coopml.he import (
    MODEL_PARAMS,
    Params,
    decrypt_model,
    decrypt_outputs,
    encrypt_model,
    encrypted_infer,
    encrypted_infer_layered,
    from_bytes,
    keygen,
    prepare,
    scale_inputs,
    to_bytes,
)
from coopml.models import TrainConfig, build_model, evaluate, train_model
from coopml.sim.timing import best_time

PAPER_TABLE_V = {"{1}": (91.5, 91.5, 89.6), "{1,2}": (94.8, 94.7, 93.0), "{1,2,3}": (95.8, 95.8, 93.8)}
INITIATOR = ShardSpec("initiator", tuple(range(10)), 1000, 1000)


@dataclass
class Table5:
    private: list[dict] = field(default_factory=list)   # per contributor: accuracies original / p=2^7 / p=2^5
    meta: list[dict] = field(default_factory=list)      # per fused set: original / p=2^7 / p=2^5


def _through_the_wire(sk, pk, model, p: int, q: int) -> torch.nn.Module:
    """Contributor encrypts -> bytes -> initiator loads and decrypts (the real path)."""
    blob = to_bytes(encrypt_model(pk, model, p, q))
    return decrypt_model(sk, from_bytes(blob, "encrypted-model"), build_model(model.arch))


def _verifier_accuracy(enc, sk, data, labels) -> float:
    """Accuracy of decrypted encrypted-inference outputs (verifier path, q-scaled inputs)."""
    x, y = data.tensors()
    out = decrypt_outputs(sk, enc, encrypted_infer(enc, scale_inputs(x, enc.q)))
    mask = np.full(10, -np.inf)
    mask[list(labels)] = 0
    keep = np.isin(y.numpy(), list(labels))
    pred = (out.astype(np.float64) + mask).argmax(1)
    return float((pred[keep] == y.numpy()[keep]).mean())


def table5(epochs: int = 30, seed: int = 0, n_test: int | None = None, scale: float = 1.0,
           fusion_epochs: int = 200, ps: tuple[int, ...] = (1 << 7, 1 << 5), q: int = 1000,
           verbose: bool = True, augment_copies: int = 8) -> Table5:
    torch.manual_seed(seed)
    pool = load_dataset("mnist", "train")
    test = load_dataset("mnist", "test")
    if n_test is not None:
        test = test.subset(np.random.default_rng(seed).permutation(len(test))[:n_test])
    shards = make_shards(pool, (*TABLE_III, INITIATOR), seed=seed, scale=scale)
    sk, pk = keygen(MODEL_PARAMS, 1, rng=seed)
    result = Table5()
    models, labels, decrypted = [], [], {p: [] for p in ps}
    for i, spec in enumerate(TABLE_III):
        shard = shards[spec.name]
        model = build_model("table4", seed=seed * 100 + i)
        train_model(model, shard.train, shard.verify, TrainConfig(max_epochs=epochs, patience=5, seed=seed + i),
                    labels=spec.labels)
        models.append(model)
        labels.append(spec.labels)
        row = {"name": spec.name, "original": evaluate(model, test, spec.labels)}
        for p in ps:
            dec = _through_the_wire(sk, pk, model, p, q)
            decrypted[p].append(dec)
            row[p] = evaluate(dec, test, spec.labels)
            row[f"verifier {p}"] = _verifier_accuracy(encrypt_model(pk, model, p, q), sk, test, spec.labels)
        result.private.append(row)
        if verbose:
            print(f"  trained {spec.name}: own-label test {row['original'] * 100:.1f} %", flush=True)
    init = shards[INITIATOR.name]
    # the case-study fusion preset (docs/fusion.md): plain eqs. 7-12 on linear Table IV features cap near 87 %
    cfg = FusionConfig.tuned(max_epochs=fusion_epochs, augment_copies=augment_copies, seed=seed)
    for n in range(1, len(models) + 1):
        name = "{" + ",".join(str(j + 1) for j in range(n)) + "}"
        row = {"name": name,
               "original": evaluate(fuse(models[:n], init.train, init.verify, "II", cfg, labels[:n]), test)}
        for p in ps:
            row[p] = evaluate(fuse(decrypted[p][:n], init.train, init.verify, "II", cfg, labels[:n]), test)
        result.meta.append(row)
    return result


def print_table5(t: Table5, ps: tuple[int, ...] = (1 << 7, 1 << 5)) -> None:
    head = "".join(f"{'p=2^' + str(p.bit_length() - 1):>12}" for p in ps)
    print("\nTable V (private models): own-label test accuracy %, original vs decrypted after encryption")
    print(f"{'model':<14}{'original':>10}{head}{'verifier (enc. inference, p=2^7)':>36}")
    for r in t.private:
        vals = "".join(f"{r[p] * 100:>12.2f}" for p in ps)
        print(f"{r['name']:<14}{r['original'] * 100:>10.2f}{vals}{r[f'verifier {ps[0]}'] * 100:>36.2f}")
    print("\nTable V (MetaModels, fusion strategy II): 10-class test accuracy %  [paper in brackets]")
    print(f"{'fused':<10}{'original':>16}" + "".join(f"{'enc p=2^' + str(p.bit_length() - 1):>18}" for p in ps))
    for r in t.meta:
        paper = PAPER_TABLE_V.get(r["name"], (float("nan"),) * 3)
        cells = [f"{r['original'] * 100:>8.2f} [{paper[0]:4.1f}]"]
        cells += [f"{r[p] * 100:>10.2f} [{paper[1 + j]:4.1f}]" for j, p in enumerate(ps)]
        print(f"{r['name']:<10}" + "".join(f"{c:>16}" if i == 0 else f"{c:>18}" for i, c in enumerate(cells)))


def _plain_integer_layers(net, x_int: np.ndarray) -> torch.Tensor:
    """The integer-scaled plaintext network, layer by layer, exact in float64 (what every ciphertext
    component goes through, without the encryption)."""
    from coopml.he.scaling import apply_layer
    h = torch.from_numpy(x_int).double()
    for layer in net.layers:
        h = apply_layer(layer, h)
    return h


def _plain_merged(model: torch.nn.Module) -> torch.nn.Module:
    """The float32 Table IV model with its first conv and average pool merged into one strided
    conv (the rewrite the encrypted side does, `coopml.he.layered.merge_pools_into_kernel`): the
    plaintext side of the like-for-like comparison of that rewrite."""
    conv, pool = model.body[0], model.body[1]
    k, s = conv.kernel_size[0], pool.kernel_size
    merged = torch.nn.Conv2d(conv.in_channels, conv.out_channels, k + s - 1, stride=s, padding=conv.padding)
    with torch.no_grad():
        w = torch.zeros_like(merged.weight)
        for a in range(s):
            for b in range(s):
                w[:, :, a:a + k, b:b + k] += conv.weight / (s * s)
        merged.weight.copy_(w)
        merged.bias.copy_(conv.bias)
    return torch.nn.Sequential(merged, *model.body[2:], model.head).eval()


def table8(images: tuple[int, ...] = (1000, 10000), p: int = 1 << 7, q: int = 1000,
           params: Params = MODEL_PARAMS, strategy: str = "element-wise", verbose: bool = True) -> list[dict]:
    """Verifier-side inference time, encrypted (first layer encrypted) vs plaintext, each side
    computed the same way: both collapsed to the one affine map a linear network is, and both
    layer by layer. Encrypted times include input scaling and the noise-budget check."""
    from coopml.he import quantize
    test = load_dataset("mnist", "test")
    model = build_model("table4", seed=0).eval()
    sk, pk = keygen(params, 1 if strategy == "element-wise" else 32, rng=0)
    t0 = time.perf_counter()
    enc = encrypt_model(pk, model, p, q, strategy)
    t_encrypt = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepare(enc)
    t_prepare = time.perf_counter() - t0
    net = quantize(model, p, q)
    w_lin = _plain_collapsed(model)
    n_threads = torch.get_num_threads()          # --threads; every timed call, both sides, gets as many
    merged_model = _plain_merged(model)
    rows = []
    say = print if verbose else (lambda *a, **k: None)
    say(f"\nTable VIII (Table IV CNN, {strategy}, p=2^{p.bit_length() - 1}, q={q}, Q=2^{64 * params.words}): "
        f"inference time, best of 3 (2 at >= 10,000 images), {n_threads} thread(s), torch and numpy's BLAS alike; "
        f"wall s [CPU s]. Model encryption {t_encrypt * 1e3:.0f} ms, one-time collapse (prepare) "
        f"{t_prepare * 1e3:.0f} ms.")
    say(f"{'images':>7} | {'collapsed: plain f64':>21} {'encrypted':>15} {'ratio':>13} | "
        f"{'layer by layer: plain f32':>26} {'encrypted':>15} {'ratio':>13} | {'exact-int plain f64':>20} {'ratio':>13}")
    for n in images:
        x, _ = test.subset(np.arange(n)).tensors()
        reps = 3 if n < 10000 else 2
        xi = scale_inputs(x, q)
        with torch.no_grad():
            plain = best_time(lambda: model(x), reps, threads=n_threads)  # noqa: B023 - timed at once
            coll = best_time(lambda: x.flatten(1).double() @ w_lin[0] + w_lin[1], reps, threads=n_threads)  # noqa: B023 - timed at once
            exact = best_time(lambda: _plain_integer_layers(net, scale_inputs(x, q)), reps, threads=n_threads)  # noqa: B023 - timed at once
        enc_coll = best_time(lambda: encrypted_infer(enc, scale_inputs(x, q), method="collapsed"), reps, threads=n_threads)  # noqa: B023 - timed at once
        enc_lay = best_time(lambda: encrypted_infer_layered(enc, scale_inputs(x, q)), reps, threads=n_threads)  # noqa: B023 - timed at once
        enc_f64 = best_time(lambda: encrypted_infer_layered(enc, scale_inputs(x, q), int8=False), reps, threads=n_threads)  # noqa: B023 - timed at once
        enc_unmerged = best_time(lambda: encrypted_infer_layered(enc, scale_inputs(x, q), merge_pools=False), reps, threads=n_threads)  # noqa: B023 - timed at once
        with torch.no_grad():
            assert torch.allclose(merged_model(x), model(x), atol=1e-4)
            plain_merged = best_time(lambda: merged_model(x), reps, threads=n_threads)  # noqa: B023 - timed at once
        out = encrypted_infer_layered(enc, xi)
        assert np.array_equal(out.words, encrypted_infer(enc, xi, method="collapsed").words)
        t_dec = best_time(lambda: decrypt_outputs(sk, enc, out), 1)[0]  # noqa: B023 - timed at once
        row = {"images": n, "plain_layered": plain, "plain_collapsed": coll, "plain_exact_layered": exact,
               "enc_collapsed": enc_coll, "enc_layered": enc_lay, "prepare": t_prepare, "decrypt": t_dec,
               "ratio_collapsed": (enc_coll[0] / coll[0], enc_coll[1] / coll[1]),
               "ratio_layered": (enc_lay[0] / plain[0], enc_lay[1] / plain[1]),
               "ratio_layered_exact": (enc_lay[0] / exact[0], enc_lay[1] / exact[1]),
               "enc_layered_f64": enc_f64, "ratio_layered_f64": (enc_f64[0] / plain[0], enc_f64[1] / plain[1]),
               "enc_layered_unmerged": enc_unmerged, "plain_layered_merged": plain_merged,
               "ratio_layered_unmerged": (enc_unmerged[0] / plain[0], enc_unmerged[1] / plain[1]),
               "ratio_layered_both_merged": (enc_lay[0] / plain_merged[0], enc_lay[1] / plain_merged[1])}
        rows.append(row)
        f = lambda t: f"{t[0]:.3f} [{t[1]:.3f}]"
        r = lambda t: f"{t[0]:.1f}x [{t[1]:.1f}x]"
        say(f"{n:>7} | {f(coll):>21} {f(enc_coll):>15} {r(row['ratio_collapsed']):>13} | {f(plain):>26} "
            f"{f(enc_lay):>15} {r(row['ratio_layered']):>13} | {f(exact):>20} {r(row['ratio_layered_exact']):>13}")
        say(f"        layer by layer with float64 limbs throughout (int8=False): {f(enc_f64)}, "
            f"{r(row['ratio_layered_f64'])} the float32 model; decrypting the {n} outputs: {t_dec:.3f} s")
        say(f"        first conv and its pooling not merged (merge_pools=False): {f(enc_unmerged)}, "
            f"{r(row['ratio_layered_unmerged'])}; both sides merged (plain f32 {f(plain_merged)}): "
            f"{r(row['ratio_layered_both_merged'])}")
    say("Both ratios compare like with like. 'collapsed': the linear Table IV net as one 784->10 map on both "
        "sides; 'layer by layer': each layer in turn, encrypted exact mod Q (the layers after the first on int8 "
        "byte digits when their weights fit int8; the first conv and its sum pooling as one strided conv) vs the "
        "float32 torch model the contributors train (and vs the same model with that merge); "
        "'exact-int': the same integer layers in float64 without encryption.")
    say("paper (Table VIII, element-wise, TensorFlow vs numpy, Case Study IV's model): about 2x")
    return rows


def _plain_collapsed(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The float Table IV model as the single affine map it is (784 -> 10), for the honest baseline."""
    with torch.no_grad():
        eye = torch.eye(784, dtype=torch.float64).view(784, 1, 28, 28)
        m = model.double()
        b = m(torch.zeros(1, 1, 28, 28, dtype=torch.float64))[0]
        w = m(eye) - b
        model.float()
    return w, b


def security(ks: tuple[int, ...] = (1, 16, 64, 256), images: int = 1000, p: int = 1 << 7) -> list[dict]:
    """Cost of a larger secret dimension k (element-wise, Table IV, 128-bit Q)."""
    test = load_dataset("mnist", "test")
    x = scale_inputs(test.subset(np.arange(images)).tensors()[0], 1000)
    model = build_model("table4", seed=0)
    rows = []
    print(f"\nCost of the secret dimension k (Table IV, element-wise, Q=2^128, {images} images)")
    print(f"{'k':>5}{'keygen':>10}{'pk size':>10}{'encrypt':>10}{'model blob':>12}{'prepare':>10}"
          f"{'infer':>10}{'decrypt':>10}")
    for k in ks:
        params = Params(w=MODEL_PARAMS.w, k=k, noise_bound=1, plain_bound=MODEL_PARAMS.plain_bound, words=2)
        t0 = time.perf_counter()
        sk, pk = keygen(params, 1, rng=0)
        t_key = time.perf_counter() - t0
        t0 = time.perf_counter()
        enc = encrypt_model(pk, model, p, 1000)
        t_enc = time.perf_counter() - t0
        size = len(to_bytes(enc))
        t0 = time.perf_counter()
        prepare(enc)
        t_prep = time.perf_counter() - t0
        t_inf = best_time(lambda: encrypted_infer(enc, x), 2)[0]  # noqa: B023 - timed at once
        out = encrypted_infer(enc, x)
        t_dec = best_time(lambda: decrypt_outputs(sk, enc, out), 1)[0]  # noqa: B023 - timed at once
        rows.append({"k": k, "keygen": t_key, "encrypt": t_enc, "blob": size, "prepare": t_prep,
                     "infer": t_inf, "decrypt": t_dec})
        print(f"{k:>5}{t_key:>9.3f}s{pk.m_words.nbytes / 1024:>8.0f}KB{t_enc:>9.3f}s{size / 2**20:>10.1f}MB"
              f"{t_prep:>9.3f}s{t_inf:>9.3f}s{t_dec:>9.3f}s")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["table5", "table8", "security", "all"], nargs="?", default="all")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--strategy", choices=["element-wise", "matrix-pair-wise"], default="element-wise")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.what in ("table5", "all"):
        t0 = time.perf_counter()
        t = table5(epochs=args.epochs, seed=args.seed)
        print_table5(t)
        print(f"({time.perf_counter() - t0:.0f} s; q = 1000; encrypted = trained, encrypted, serialised, "
              f"decrypted by the initiator, then used)")
    if args.what in ("table8", "all"):
        table8(tuple(args.images), strategy=args.strategy)
    if args.what in ("security", "all"):
        security(tuple(args.ks))


if __name__ == "__main__":
    main()
