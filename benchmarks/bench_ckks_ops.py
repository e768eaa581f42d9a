"""Micro-benchmark of the SEAL (TenSEAL 0.3.18) operations the CKKS engine could be built from.

Measured before designing coopml.he.ckks (docs/ckks.md "Cost of each operation"): which
layout and which primitives fit "1000 MNIST images through Table IV in <= 60 s, <= 50 MB".

Run:  PYTHONPATH=src .venv/bin/python benchmarks/bench_ckks_ops.py
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal

from coopml.he.ckks import _seal


def per_op(fn: Callable[[], object], repeat: int = 50) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def context(n: int, bits: list[int]) -> seal.SEALContext:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(n, bits))
    return seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)


def seal_ops(n: int, bits: list[int], scale_bits: int) -> None:
    ctx = context(n, bits)
    kg = seal.KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = seal.PublicKey()
    kg.create_public_key(pk)
    enc = seal.Encryptor(ctx, pk)
    enc.set_secret_key(sk)
    ev = seal.Evaluator(ctx)
    ce = seal.CKKSEncoder(ctx)
    dec = seal.Decryptor(ctx, sk)
    slots = ce.slot_count()
    vals = list(np.random.default_rng(0).random(slots))
    scale = 2.0 ** scale_bits
    pt = seal.Plaintext()
    ce.encode(vals, scale, pt)
    ct = seal.Ciphertext()
    enc.encrypt(pt, ct)
    ct2 = seal.Ciphertext()
    enc.encrypt_symmetric(pt, ct2)
    rows: list[tuple[str, str]] = []
    rows.append(("encode (all slots)", f"{per_op(lambda: ce.encode(vals, scale, seal.Plaintext())) * 1e3:.3f} ms"))
    rows.append(("encrypt, public key", f"{per_op(lambda: enc.encrypt(pt, seal.Ciphertext())) * 1e3:.3f} ms"))
    rows.append(("encrypt, symmetric", f"{per_op(lambda: enc.encrypt_symmetric(pt, seal.Ciphertext())) * 1e3:.3f} ms"))
    rows.append(("encrypt, symmetric seeded + save", f"{per_op(lambda: _seal.save_bytes(enc.encrypt_symmetric(pt))) * 1e3:.3f} ms"))
    full_pk = _seal.save_bytes(ct)
    full_sym = _seal.save_bytes(ct2)
    seeded = _seal.save_bytes(enc.encrypt_symmetric(pt))
    limbs = len(bits) - (1 if len(bits) > 1 else 0)
    raw_words = 2 * limbs * n * 8
    rows.append(("size: raw 2 polys (u64 words)", f"{raw_words / 1024:.1f} KiB"))
    rows.append(("size: public-key ct, SEAL zstd", f"{len(full_pk) / 1024:.1f} KiB"))
    rows.append(("size: symmetric ct, SEAL zstd", f"{len(full_sym) / 1024:.1f} KiB"))
    rows.append(("size: symmetric seeded, SEAL zstd", f"{len(seeded) / 1024:.1f} KiB"))
    packed = sum((b + 7) // 8 for b in bits[:limbs]) * n + 65
    rows.append(("size: seeded, byte-packed c0 + seed (ours)", f"{packed / 1024:.1f} KiB"))
    rows.append(("save to bytes (zstd)", f"{per_op(lambda: _seal.save_bytes(ct)) * 1e3:.3f} ms"))
    rows.append(("save + zstd-decompress + parse -> numpy",
                 f"{per_op(lambda: _seal.parse_ciphertext(_seal.save_bytes(ct), n, limbs, 4)) * 1e3:.3f} ms"))
    raw = _seal.parse_ciphertext(full_pk, n, limbs, 4)
    built = _seal.build_ciphertext(raw)
    rows.append(("numpy -> SEAL bytes -> load", f"{per_op(lambda: _seal.load_into(seal.Ciphertext(), ctx, built)) * 1e3:.3f} ms"))
    rows.append(("load seeded (expands c1)", f"{per_op(lambda: _seal.load_into(seal.Ciphertext(), ctx, seeded)) * 1e3:.3f} ms"))
    pt_scalar = seal.Plaintext()
    ce.encode(0.37, scale, pt_scalar)
    rows.append(("multiply_plain by scalar", f"{per_op(lambda: ev.multiply_plain(ct, pt_scalar, seal.Ciphertext()), 200) * 1e6:.1f} us"))
    rows.append(("encode scalar + multiply_plain", f"{per_op(lambda: (ce.encode(0.37, scale, pt_scalar), ev.multiply_plain(ct, pt_scalar, seal.Ciphertext())), 200) * 1e6:.1f} us"))
    rows.append(("multiply_plain by vector", f"{per_op(lambda: ev.multiply_plain(ct, pt, seal.Ciphertext()), 200) * 1e6:.1f} us"))
    rows.append(("add", f"{per_op(lambda: ev.add(ct, ct2, seal.Ciphertext()), 200) * 1e6:.1f} us"))
    if limbs > 1:
        prod = seal.Ciphertext()
        ev.multiply_plain(ct, pt_scalar, prod)
        rows.append(("rescale_to_next", f"{per_op(lambda: ev.rescale_to_next(prod, seal.Ciphertext())) * 1e6:.1f} us"))
        rows.append(("multiply ct x ct (no relin)", f"{per_op(lambda: ev.multiply(ct, ct2, seal.Ciphertext())) * 1e6:.1f} us"))
        rk = seal.RelinKeys()
        kg.create_relin_keys(rk)
        sq = seal.Ciphertext()
        ev.multiply(ct, ct2, sq)
        rows.append(("relinearize", f"{per_op(lambda: ev.relinearize(sq, rk, seal.Ciphertext())) * 1e6:.1f} us"))
        gk = seal.GaloisKeys()
        kg.create_galois_keys([3], gk)  # Galois element 3 = rotation by one slot
        rows.append(("rotate by 1 (Galois key switch)", f"{per_op(lambda: ev.rotate_vector(ct, 1, gk, seal.Ciphertext())) * 1e6:.1f} us"))
        rows.append(("size: relin keys (SEAL zstd)", f"{len(_seal.save_bytes(rk)) / 1024:.1f} KiB"))
        rows.append(("size: one Galois key (SEAL zstd)", f"{len(_seal.save_bytes(gk)) / 1024:.1f} KiB"))
    rows.append(("size: public key (SEAL zstd)", f"{len(_seal.save_bytes(pk)) / 1024:.1f} KiB"))
    out = seal.Plaintext()
    rows.append(("decrypt + decode", f"{per_op(lambda: (dec.decrypt(ct, out), ce.decode_double(out))) * 1e3:.3f} ms"))
    print(f"\nSEAL via tenseal.sealapi, N={n}, coeff_modulus bits {bits}, scale 2^{scale_bits}, {slots} complex slots")
    for name, val in rows:
        print(f"  {name:<42}{val:>14}")


def gemm(out: int, inner: int, cols: int) -> None:
    """Exact modular matrix product with float64 limbs (the engine's linear layer)."""
    rng = np.random.default_rng(0)
    a = rng.integers(-(1 << 20), 1 << 20, size=(out, inner)).astype(np.float64)
    b = rng.integers(-(1 << 20), 1 << 20, size=(inner, cols)).astype(np.float64)
    t = per_op(lambda: a @ b, 3)
    print(f"\nfloat64 GEMM ({out} x {inner}) @ ({inner} x {cols}): {t:.3f} s per limb product "
          f"({2 * out * inner * cols / t / 1e9:.1f} GFLOP/s)")


def tenseal_per_image() -> None:
    """TenSEAL's own layout: one image per ciphertext, vector-matrix products with rotations."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    ctx.global_scale = 2 ** 40
    ctx.generate_galois_keys()
    x = np.random.default_rng(0).random(784)
    w = np.random.default_rng(1).normal(size=(784, 10)) * 0.05
    t_enc = per_op(lambda: ts.ckks_vector(ctx, x), 5)
    v = ts.ckks_vector(ctx, x)
    t_mm = per_op(lambda: v.matmul(w), 3)
    size = len(v.serialize())
    print("\nTenSEAL CKKSVector, one image per ciphertext (N=8192, [60,40,40,60], Galois keys):")
    print(f"  encrypt one image {t_enc * 1e3:.1f} ms, serialized {size / 1024:.1f} KiB; "
          f"784x10 vector-matrix product {t_mm * 1e3:.0f} ms -> 1000 images: {t_mm * 1000:.0f} s for the head alone")
    print(f"  Galois keys {len(ctx.serialize(save_galois_keys=True, save_relin_keys=False)) / 1e6:.1f} MB")


if __name__ == "__main__":
    print(f"load average {os.getloadavg()}")
    seal_ops(2048, [54], 25)
    seal_ops(4096, [30, 25, 25, 25], 25)
    gemm(794, 785, 4096)
    tenseal_per_image()
