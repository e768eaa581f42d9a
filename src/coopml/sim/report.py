"""Markdown + PNG report of the case studies (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from coopml.fusion import FusionConfig
from coopml.sim.case_studies import PAPER_TABLE_V_ORIGINAL, CaseStudiesResult
from coopml.sim.case_study4 import CaseStudy4Result

SUBSETS = ("{1}", "{1,2}", "{1,2,3}")


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def _fig10(res: CaseStudiesResult, path: Path) -> None:
    rows = res.cs1.contributors
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bars = ax.bar([f"C{i + 1}\n{r.labels}" for i, r in enumerate(rows)], [100 * r.local_accuracy for r in rows],
                  color=["tab:blue", "tab:orange", "tab:green"])
    ax.bar_label(bars, fmt="%.1f")
    ax.axhline(100 * res.config.verify_threshold, ls="--", c="grey", lw=1, label="criterion")
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy on local verification data (%)")
    ax.set_title("Case Study I: computing contributors (cf. Fig. 10)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fig11(res: CaseStudiesResult, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, cs, title in ((axes[0], res.cs1, "Case Study I (Table I CNNs, Table II split)"),
                          (axes[1], res.cs2, "Case Study II (Table IV models, Table III split)")):
        for method, accs in cs.fused.items():
            ax.plot(SUBSETS[:len(accs)], [100 * a for a in accs], marker="o", label=method)
        ax.axhline(100 * cs.initiator_only, ls=":", c="k", lw=1, label="initiator data only")
        ax.axhline(100 * cs.initiator_only_tuned, ls="-.", c="k", lw=1, label="initiator data only, tuned")
        own = getattr(cs, "initiator_member_alone", None)
        if own is not None:
            ax.axhline(100 * own, ls="--", c="tab:red", lw=1, label="initiator's own CNN alone")
        if cs is res.cs2:
            ax.plot(SUBSETS, PAPER_TABLE_V_ORIGINAL, ls="--", marker="x", c="grey", label="paper Table V")
        ax.set_xlabel("fused private models")
        ax.set_ylabel("MetaModel test accuracy (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fig12(res: CaseStudiesResult, path: Path) -> None:
    sc = res.cs3.scenarios
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = range(len(sc))
    w = 0.38
    for ax, key_ours, key_fed, ylabel, scale in (
            (axes[0], "ours_accuracy", "fedavg_accuracy", "test accuracy (%)", 100.0),
            (axes[1], "ours_bytes", "fedavg_bytes", "bytes communicated (MiB)", 1 / 2**20)):
        b1 = ax.bar([i - w / 2 for i in x], [getattr(s, key_ours) * scale for s in sc], w, label="our paradigm")
        b2 = ax.bar([i + w / 2 for i in x], [getattr(s, key_fed) * scale for s in sc], w, label="FedAvg")
        ax.bar_label(b1, fmt="%.1f", fontsize=8)
        ax.bar_label(b2, fmt="%.1f", fontsize=8)
        ax.set_xticks(list(x), [s.name for s in sc], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0].set_ylim(0, 105)
    fig.suptitle("Case Study III: our paradigm vs federated averaging (cf. Fig. 12)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fig_cs4(cs: CaseStudy4Result, path: Path) -> None:
    """Table VI as bars (per contributor: original / decrypted / encrypted inference / ReLU as dropout),
    Table VII as lines, Table VIII as bars (CPU seconds)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    rows = cs.table6
    labels = [f"{r.arch.replace('fading-', '')}\nC{i % 3 + 1}" for i, r in enumerate(rows)]
    x = range(len(rows))
    w = 0.2
    series = [("original", [r.original for r in rows]), ("decrypted model", [r.decrypted for r in rows]),
              ("encrypted inference", [r.encrypted_inference for r in rows]),
              ("ReLU as random dropout", [r.relu_as_dropout if r.relu_as_dropout is not None else float("nan")
                                          for r in rows])]
    for j, (name, vals) in enumerate(series):
        axes[0].bar([i + (j - 1.5) * w for i in x], [100 * v for v in vals], w, label=name)
    axes[0].set_xticks(list(x), labels, fontsize=8)
    axes[0].set_ylim(0, 105)
    axes[0].axhline(50, ls=":", c="grey", lw=1)
    axes[0].set_ylabel("local test accuracy (%)")
    axes[0].set_title("Table VI: private models", fontsize=9)
    axes[0].legend(fontsize=7, loc="lower right")
    for arch in dict.fromkeys(r.arch for r in cs.table7):
        t7 = [r for r in cs.table7 if r.arch == arch]
        axes[1].plot([r.fused for r in t7], [100 * r.original for r in t7], marker="o", label=f"{arch} original")
        axes[1].plot([r.fused for r in t7], [100 * r.encrypted for r in t7], marker="x", ls="--",
                     label=f"{arch} encrypted")
    axes[1].set_xlabel("fused private models")
    axes[1].set_ylabel("MetaModel test accuracy (%)")
    axes[1].set_title("Table VII: MetaModel (strategy II)", fontsize=9)
    axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3)
    t8 = cs.table8
    names = [f"{r.arch.replace('fading-', '')}\n{'EW' if r.strategy == 'element-wise' else 'MPW'}" for r in t8]
    xs = range(len(t8))
    b1 = axes[2].bar([i - 0.2 for i in xs], [1e3 * r.plain[1] for r in t8], 0.4, label="plaintext (float32)")
    b2 = axes[2].bar([i + 0.2 for i in xs], [1e3 * r.encrypted[1] for r in t8], 0.4, label="encrypted")
    axes[2].bar_label(b2, labels=[f"{r.ratio[1]:.1f}x" for r in t8], fontsize=7)
    del b1
    axes[2].set_xticks(list(xs), names, fontsize=8)
    axes[2].set_ylabel(f"CPU ms for {t8[0].samples if t8 else 0} windows")
    axes[2].set_title("Table VIII: evaluation time (paper: ~2x)", fontsize=9)
    axes[2].legend(fontsize=7)
    fig.suptitle("Case Study IV: fading-channel detection on synthetic link-power data, with the encryption "
                 "interface", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _secs(v: tuple[float, float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}]"


def _cs4_section(cs: CaseStudy4Result) -> list[str]:
    cfg = cs.config
    md = [
        "## Case Study IV (fading-channel detection with the encryption interface; Tables VI-VIII)", "",
        "![case study IV](fig_cs4.png)", "",
        (f"Data: the synthetic link-power stand-in of `coopml.data.fading` (the paper's NASA Glenn Link Power "
        f"database is not public; model, parameters and labelling rule in docs/he.md): 4 sets of "
        f"{cs.train_windows:,} training and {cs.test_windows:,} test windows of 64 readings (scale {cfg.scale} of "
        f"the paper's 10,000 + 1,000), sets 1-3 the contributors', set 4 the verifiers' (and the initiator's "
        f"fusion data); {100 * cs.class_balance:.0f} % of the verifiers' test windows are 'fading'. Models: "
        f"`fading-cnn` (2 convolution layers with ReLU) and `fading-fc` (Fig. 5(b): the cubic Taylor sigmoid); "
        f"Adam, up to {cfg.epochs} epochs, early stopping on {100 * cfg.val_fraction:.0f} % of the local training "
        f"windows. Interface: p = 2^{cfg.p.bit_length() - 1}, q = {cfg.q}, Q = 2^64, first layer encrypted with "
        f"both strategies."), "",
        ("What runs in cipherspace: the first layer (the linear prefix up to the first nonlinearity). ReLU "
        "needs the sign of a value hidden in uniformly random Z_Q components and the Taylor sigmoid needs "
        "ciphertext products, so the key holder decrypts the first layer's outputs and finishes the network "
        "on plaintext integers (outputs equal the integer-scaled network bit for bit, both strategies). "
        "'ReLU as dropout' is the paper's literal 'ReLU via random dropout': a random mask is linear, hence "
        "computable on ciphertexts, but it is not ReLU."), "",
        ("| arch | contributor | epochs | original | decrypted model | encrypted inference | verifiers' data, "
         "original | verifiers' data, encrypted | ReLU as random dropout |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in cs.table6:
        md.append(f"| {r.arch} | {r.contributor} | {r.epochs} | {_pct(r.original)} | {_pct(r.decrypted)} | "
                  f"{_pct(r.encrypted_inference)} | {_pct(r.verifiers_original)} | {_pct(r.verifiers_encrypted)} | "
                  f"{'-' if r.relu_as_dropout is None else _pct(r.relu_as_dropout)} |")
    md += ["", "| arch | fused | MetaModel, original | MetaModel, encrypted (decrypted members) |", "|---|---|---|---|"]
    for r7 in cs.table7:
        md.append(f"| {r7.arch} | {r7.fused} | {_pct(r7.original)} | {_pct(r7.encrypted)} |")
    md += ["", (f"Table VIII: {cs.table8[0].samples if cs.table8 else 0} test windows, best of "
                f"{cfg.timing_repeats}, one thread, wall s [CPU s]. Both sides layer by layer; 'encrypted' = first "
                "layer in cipherspace + decryption + the rest on plaintext integers; 'exact-int' = the same "
                "integer network unencrypted. Paper: about 2x."), "",
           ("| arch | strategy | encrypt model (ms) | plaintext float32 | exact-int plaintext | encrypted | "
            "of which cipherspace | ratio vs float32 | ratio vs exact-int |"), "|---|---|---|---|---|---|---|---|---|"]
    for r8 in cs.table8:
        md.append(f"| {r8.arch} | {r8.strategy} | {1e3 * r8.encrypt_seconds:.1f} | {_secs(r8.plain)} | "
                  f"{_secs(r8.plain_exact)} | {_secs(r8.encrypted)} | {_secs(r8.cipherspace)} | "
                  f"{r8.ratio[0]:.1f}x [{r8.ratio[1]:.1f}x] | {r8.ratio_exact[0]:.1f}x [{r8.ratio_exact[1]:.1f}x] |")
    md += ["", f"({cs.seconds:.0f} s)", ""]
    return md


def _fused_table(cs, paper: tuple[float, ...] | None = None) -> list[str]:
    head = "| method | " + " | ".join(SUBSETS) + " |"
    lines = [head, "|---" * 4 + "|"]
    for method, accs in cs.fused.items():
        lines.append(f"| {method} | " + " | ".join(_pct(a) for a in accs) + " |")
    lines.append("| initiator data only (no fusion) | " + " | ".join([_pct(cs.initiator_only)] * 3) + " |")
    lines.append("| initiator data only, tuned (augmented, refit on train + verification) | "
                 + " | ".join([_pct(cs.initiator_only_tuned)] * 3) + " |")
    own = getattr(cs, "initiator_member_alone", None)
    if own is not None:
        lines.append("| the initiator's CNN fused above, by itself (augmented, refit on train + verification) | "
                     + " | ".join([_pct(own)] * 3) + " |")
    if paper:
        lines.append("| paper, Table V 'Original' (strategy II) | " + " | ".join(f"{p:.1f}" for p in paper) + " |")
    return lines


def _contributor_table(rows) -> list[str]:
    lines = ["| contributor | arch | labels | epochs | local verification (own labels) | test, own labels | test, all 10 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.arch} | {r.labels} | {r.epochs} | {_pct(r.local_accuracy)} | "
                     f"{_pct(r.test_own_accuracy)} | {_pct(r.test_all_accuracy)} |")
    return lines


def write_report(out_dir: str | Path, results: CaseStudiesResult) -> Path:
    """Write report.md, fig10.png, fig11.png, fig12.png (fig_cs4.png) and results.json into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _fig10(results, out / "fig10.png")
    _fig11(results, out / "fig11.png")
    _fig12(results, out / "fig12.png")
    if results.cs4 is not None:
        _fig_cs4(results.cs4, out / "fig_cs4.png")
    (out / "results.json").write_text(results.model_dump_json(indent=2))
    cfg = results.config
    test_n = "10,000 (full MNIST test set)" if cfg.test_samples is None else f"first {cfg.test_samples} MNIST test images"
    fc = cfg.fusion
    md = [
        f"# coopml case studies ({cfg.preset} preset, seed {cfg.seed})", "",
        (f"Accuracies in % on the {test_n}. Shards are drawn from the MNIST training set at scale {cfg.scale} "
        f"(1.0 = the paper's 1000 train + 1000 verification images per party). Contributors: Adam, "
        f"lr {cfg.contributor_lr}, batch 50, up to {cfg.contributor_epochs} epochs, early stopping "
        f"(patience {cfg.contributor_patience}) on their own verification data."), "",
        f"MetaModel fusion: trained on the initiator's train shard, early-stopped on its verification shard; "
        f"lr {fc.lr}, batch {fc.batch_size}, up to {fc.max_epochs} epochs per stage (patience {fc.patience}), "
        f"feature z-scoring {'on' if fc.normalize else 'off'}, feature activation {fc.feature_activation}, "
        f"hidden activation {fc.hidden_activation}, {fc.augment_copies} augmented copies of the initiator's "
        f"images (random shift/rotation/scale), feature dropout {fc.feature_dropout}"
        + (". Then retrained from the same start on train + verification shards for the epochs early "
           "stopping chose (`refit_on_all`). " if fc.refit_on_all else ". ")
        + "'Late fusion' averages each member's softmax over its own labels (no training). "
        "'Initiator data only' trains the same architecture on the initiator's shard alone, like a "
        "contributor; its 'tuned' variant also gets per-image random affine augmentation, twice the "
        "patience and the final refit on train + verification shards, i.e. the same advantages the "
        "fusion preset has.", "",
        "## Case Study I (Table I CNNs, Table II split)", "",
        "![contributors](fig10.png)", "",
        *_contributor_table(results.cs1.contributors), "",
        "![fusion](fig11.png)", "",
        *_fused_table(results.cs1), "",
        f"({results.cs1.seconds:.0f} s)", "",
        "## Case Study II (Table IV models, Table III split; Table V 'Original' column)", "",
        _cs2_fusion_note(cfg.fusion, cfg.cs2_fusion), "",
        *_contributor_table(results.cs2.contributors), "",
        *_fused_table(results.cs2, PAPER_TABLE_V_ORIGINAL), "",
        f"({results.cs2.seconds:.0f} s)", "",
        "## Case Study III (our paradigm vs FedAvg)", "",
        "![fedavg](fig12.png)", "",
        (f"FedAvg: 4 clients (the three contributors' and the initiator's "
        f"{'shards, both halves, augmented images' if cfg.cs3_recipe == 'tuned' else 'train shards'}), "
        f"{cfg.fedavg_rounds} rounds x {cfg.fedavg_local_epochs} local epochs, all clients every round, weights "
        f"averaged by sample count. Ours: three contributors train once (up to {cfg.contributor_epochs} epochs"
        f"{'; augmented images, refit on both halves of their shard' if cfg.cs3_recipe == 'tuned' else ''}), "
        "one verifier accepts a model "
        f"at >= {100 * cfg.verify_threshold:.0f} % on its own labels, the initiator fuses accepted models (strategy II). "
        f"Every party uses {cfg.fedavg_arch} ({_mib(results.cs3.model_bytes)} MiB as float32 safetensors)."), "",
        ("Bytes: every network crossing once. FedAvg counts the global model sent to every client and every "
        "client's model sent back, each round. Ours counts each model fetched once by the verifier (body + "
        "head) and each accepted model's body once by the initiator, "
        + ("pulled from the contributor's own storage node (as deployed: every party runs its own IPFS node)"
           if cfg.cs3_storage == "own-node" else "plus one upload of both parts to a shared storage node")
        + "; no data moves. On-chain transactions (hashes, votes: a few hundred bytes) are not counted in either."), "",
        "| scenario | ours: accuracy | ours: MiB | ours: verified | FedAvg: accuracy | FedAvg: MiB | FedAvg per round |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in results.cs3.scenarios:
        md.append(f"| {s.name} | {_pct(s.ours_accuracy)} | {_mib(s.ours_bytes)} | {', '.join(s.ours_verified) or '-'} | "
                  f"{_pct(s.fedavg_accuracy)} | {_mib(s.fedavg_bytes)} | "
                  f"{' / '.join(_pct(a) for a in s.fedavg_round_accuracy)} |")
    md += ["", (f"'Ours' above ships members as {cfg.transport_precision}. Every shipping precision measured "
                "(each time the verifier judges and the initiator fuses exactly the weights received; a model "
                "travels as two objects, body and head, and the initiator fetches only the bodies):"), "",
           "| scenario | shipped as | accuracy | MiB | ours / FedAvg bytes | MiB via a shared storage node | verified |",
           "|---|---|---|---|---|---|---|"]
    for s in results.cs3.scenarios:
        for v in s.ours:
            md.append(f"| {s.name} | {v.precision} | {_pct(v.accuracy)} | {_mib(v.bytes_total)} | "
                      f"{v.bytes_total / s.fedavg_bytes:.3f}x | {_mib(v.bytes_shared_node)} | "
                      f"{', '.join(v.verified) or '-'} |")
    if any(len(s.fedavg) > 1 for s in results.cs3.scenarios):
        md += ["", ("FedAvg above ships float32, as in the paper. The like-for-like baseline ships FedAvg's "
                    "weights with the same encoding both ways (clients train from, and the server averages, "
                    "the weights received):"), "",
               "| scenario | FedAvg shipped as | accuracy | MiB | per round |", "|---|---|---|---|---|"]
        for s in results.cs3.scenarios:
            for f in s.fedavg:
                md.append(f"| {s.name} | {f.precision} | {_pct(f.accuracy)} | {_mib(f.bytes_total)} | "
                          f"{' / '.join(_pct(a) for a in f.round_accuracy)} |")
    md += ["", "Bytes per party (MiB sent / received), 'ours' as above:", ""]
    for s in results.cs3.scenarios:
        rows = [(f"ours: {p.party}", p) for p in next((v.parties for v in s.ours
                                                       if v.precision == cfg.transport_precision), [])]
        rows += [(f"FedAvg: {p.party}", p) for p in s.fedavg_parties]
        md += [f"*{s.name}*", "", "| party | sent | received |", "|---|---|---|"]
        md += [f"| {name} | {_mib(p.sent)} | {_mib(p.received)} |" for name, p in rows]
        md.append("")
    md += [f"({results.cs3.seconds:.0f} s)", ""]
    if results.cs4 is not None:
        md += _cs4_section(results.cs4)
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def _cs2_fusion_note(base: FusionConfig, cs2: FusionConfig) -> str:
    """What Case Study II's fusion does beyond the settings above (its members have feature maps)."""
    before = base.model_dump()
    changed = {k: v for k, v in cs2.model_dump().items() if before.get(k) != v}
    if not changed:
        return "Fusion as above."
    return ("Fusion as above, except (Table IV members expose 16 x 7 x 7 feature maps; conv branches "
            "over them, `FusionConfig.spatial()`): " + ", ".join(f"{k} = {v}" for k, v in changed.items()) + ".")
