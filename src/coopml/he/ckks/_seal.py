"""The thin layer between coopml and Microsoft SEAL (as shipped inside TenSEAL: `tenseal.sealapi`).

Why this exists: the engine evaluates linear layers as exact modular matrix products over the
ciphertexts' coefficient arrays (numpy), and sends ciphertexts in a compact packed form. SEAL's
Python binding only reads and writes objects through files, in SEAL's own serialization format
(zstd-compressed by default). So this module

- moves SEAL objects to and from bytes (through a private temporary directory),
- decompresses SEAL's zstd frames (system libzstd through ctypes: SEAL itself links zstd, and
  Python 3.11 has no zstd module), and
- parses / builds SEAL's ciphertext format (`Ciphertext::save_members`, SEAL 4.x):

      SEALHeader (16 bytes) | parms_id (4 x u64) | is_ntt_form (u8) | size (u64) | N (u64)
      | coeff_modulus_size (u64) | scale (f64) | correction_factor (u64)
      | DynArray: SEALHeader | count (u64) | count x u64 coefficients (size, L, N) order
      [ | UniformRandomGeneratorInfo: SEALHeader | prng type (u8) | seed (8 x u64) ]  (seeded only)

  A seeded ciphertext (symmetric encryption, second polynomial replaced by the PRNG seed that
  regenerates it) stores only the first polynomial; SEAL expands the seed on load.

Nothing here knows about models; every parse error is a `CkksFormatError`.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import shutil
import struct
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import tenseal.sealapi as seal

from coopml.he.ckks.errors import CkksFormatError

SEAL_MAGIC = 0xA15E
HEADER = struct.Struct("<HBBBBHQ")          # magic, header size, major, minor, compr mode, reserved, size
COMPR_NONE, COMPR_ZLIB, COMPR_ZSTD = 0, 1, 2
META = struct.Struct("<4QBQQQdQ")          # parms_id, is_ntt_form, size, N, L, scale, correction factor
SEED_INFO_BYTES = 1 + 64                  # prng type + 512-bit seed
PRNG_TYPES = (1, 2)                       # blake2xb, shake256 (SEAL's prng_type; 0 = unknown)


# --------------------------------------------------------------------------- zstd


class _Zstd:
    """Just ZSTD_decompress / ZSTD_compress from the system libzstd."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("zstd") or "libzstd.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:  # pragma: no cover - libzstd1 is a required Debian package
            raise ImportError(f"coopml.he.ckks needs the zstd shared library (libzstd1): {exc}") from None
        lib.ZSTD_decompress.restype = ctypes.c_size_t
        lib.ZSTD_decompress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
        lib.ZSTD_compress.restype = ctypes.c_size_t
        lib.ZSTD_compress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                                      ctypes.c_int]
        lib.ZSTD_compressBound.restype = ctypes.c_size_t
        lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        self._lib = lib

    def decompress(self, data: bytes, max_size: int) -> bytes:
        """Decompress one frame whose output must not exceed `max_size` (a zip bomb is an error)."""
        out = ctypes.create_string_buffer(max(max_size, 1))
        n = self._lib.ZSTD_decompress(out, max_size, data, len(data))
        if self._lib.ZSTD_isError(n):
            raise CkksFormatError("compressed SEAL payload is corrupt or larger than its parameters allow")
        return out.raw[:n]

    def compress(self, data: bytes, level: int = 3) -> bytes:
        cap = self._lib.ZSTD_compressBound(len(data))
        out = ctypes.create_string_buffer(cap)
        n = self._lib.ZSTD_compress(out, cap, data, len(data), level)
        if self._lib.ZSTD_isError(n):  # pragma: no cover - cannot fail with a bound-sized buffer
            raise CkksFormatError("zstd compression failed")
        return out.raw[:n]


ZSTD = _Zstd()


# --------------------------------------------------------------------------- objects <-> bytes


class _Saveable(Protocol):
    def save(self, path: str) -> None: ...


class _Scratch(threading.local):
    """A private (0700) temporary directory per thread for SEAL's file-only save/load."""

    dir: str | None = None

    def path(self) -> str:
        if self.dir is None or not os.path.isdir(self.dir):
            base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            self.dir = tempfile.mkdtemp(prefix="coopml-seal-", dir=base)
            atexit.register(shutil.rmtree, self.dir, True)
        return os.path.join(self.dir, "obj")


_SCRATCH = _Scratch()


def save_bytes(obj: _Saveable) -> bytes:
    """SEAL's own serialization of `obj` (zstd-compressed, as SEAL writes it)."""
    path = _SCRATCH.path()
    try:
        obj.save(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        if os.path.exists(path):
            os.remove(path)


def load_into(obj: Any, context: Any, data: bytes) -> None:
    """`obj.load(context, ...)` from bytes; SEAL's own validation errors become CkksFormatError."""
    path = _SCRATCH.path()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if context is None:
            obj.load(path)
        else:
            obj.load(context, path)
    except (ValueError, RuntimeError, TypeError, OSError) as exc:
        raise CkksFormatError(f"SEAL rejected the object: {exc}") from None
    finally:
        if os.path.exists(path):
            os.remove(path)


def _reference_version() -> tuple[int, int]:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    raw = save_bytes(parms)
    _, _, major, minor, _, _, _ = HEADER.unpack_from(raw)
    return major, minor


SEAL_VERSION = _reference_version()


def header(payload_len: int, compr: int = COMPR_NONE) -> bytes:
    return HEADER.pack(SEAL_MAGIC, HEADER.size, SEAL_VERSION[0], SEAL_VERSION[1], compr, 0,
                       HEADER.size + payload_len)


def open_envelope(data: bytes, max_payload: int) -> bytes:
    """Check a SEAL header and return the (decompressed) payload."""
    if len(data) < HEADER.size:
        raise CkksFormatError(f"SEAL object truncated: {len(data)} bytes")
    magic, hsize, major, minor, compr, _, size = HEADER.unpack_from(data)
    if magic != SEAL_MAGIC or hsize != HEADER.size:
        raise CkksFormatError("not a SEAL object (bad magic)")
    if (major, minor) != SEAL_VERSION:
        raise CkksFormatError(f"SEAL object from version {major}.{minor}, this build reads "
                              f"{SEAL_VERSION[0]}.{SEAL_VERSION[1]}")
    if size != len(data):
        raise CkksFormatError(f"SEAL object says {size} bytes, got {len(data)}")
    body = data[HEADER.size:]
    if compr == COMPR_NONE:
        if len(body) > max_payload:
            raise CkksFormatError("SEAL object larger than its parameters allow")
        return body
    if compr == COMPR_ZSTD:
        return ZSTD.decompress(body, max_payload)
    raise CkksFormatError(f"unsupported SEAL compression mode {compr}")


# --------------------------------------------------------------------------- ciphertext format


@dataclass
class RawCiphertext:
    """A SEAL CKKS ciphertext as numpy: `data[(poly, limb, coeff)]` (NTT form), or, when
    `seed` is set, only the first polynomial plus the 65-byte PRNG seed that regenerates the second."""

    parms_id: tuple[int, int, int, int]
    scale: float
    data: np.ndarray                  # uint64 (size, L, N); (1, L, N) when seeded
    size: int                         # number of polynomials of the ciphertext (2 when seeded)
    seed: bytes | None = None
    is_ntt_form: bool = True


def payload_limit(size: int, n: int, limbs: int) -> int:
    return META.size + 2 * HEADER.size + 8 + 8 * size * limbs * n + SEED_INFO_BYTES


def parse_ciphertext(data: bytes, n: int, limbs: int, max_size: int) -> RawCiphertext:
    """Parse SEAL's Ciphertext bytes (compressed or not, seeded or not) into numpy."""
    body = open_envelope(data, payload_limit(max_size, n, limbs))
    if len(body) < META.size + HEADER.size + 8:
        raise CkksFormatError("SEAL ciphertext truncated")
    p0, p1, p2, p3, ntt, size, n_, l_, scale, _cf = META.unpack_from(body)
    if n_ != n or l_ != limbs or not 2 <= size <= max_size:
        raise CkksFormatError(f"ciphertext shape (size {size}, N {n_}, L {l_}) does not match the "
                              f"parameters (N {n}, L {limbs}, size <= {max_size})")
    off = META.size
    magic, hsize, _, _, compr, _, dsize = HEADER.unpack_from(body, off)
    (count,) = struct.unpack_from("<Q", body, off + HEADER.size)
    if magic != SEAL_MAGIC or hsize != HEADER.size or compr != COMPR_NONE or dsize != HEADER.size + 8 + 8 * count:
        raise CkksFormatError("SEAL ciphertext data block is malformed")
    seeded = count == limbs * n and size == 2
    if count not in (size * limbs * n, limbs * n) or (count == limbs * n and size != 2):
        raise CkksFormatError(f"ciphertext data holds {count} words for size {size}")
    off += HEADER.size + 8
    end = off + 8 * count
    if end > len(body):
        raise CkksFormatError("SEAL ciphertext data truncated")
    arr = np.frombuffer(body, dtype="<u8", count=count, offset=off).reshape(-1, limbs, n).astype(np.uint64)
    seed = None
    if seeded:
        if len(body) != end + HEADER.size + SEED_INFO_BYTES:
            raise CkksFormatError("seeded SEAL ciphertext has no valid seed")
        seed = bytes(body[end + HEADER.size:])
    elif len(body) != end:
        raise CkksFormatError(f"SEAL ciphertext has {len(body) - end} trailing bytes")
    return RawCiphertext((p0, p1, p2, p3), scale, arr, size, seed, bool(ntt))


def build_ciphertext(ct: RawCiphertext) -> bytes:
    """SEAL Ciphertext bytes (uncompressed) for `ct`; SEAL's load re-validates everything."""
    arr = np.ascontiguousarray(ct.data, dtype="<u8")
    count = arr.size
    meta = META.pack(*ct.parms_id, int(ct.is_ntt_form), ct.size, arr.shape[2], arr.shape[1], ct.scale, 1)
    dyn = header(8 + 8 * count) + struct.pack("<Q", count) + arr.tobytes()
    tail = b""
    if ct.seed is not None:
        tail = header(SEED_INFO_BYTES) + ct.seed
    payload = meta + dyn + tail
    return header(len(payload)) + payload


PT_META = struct.Struct("<4QQd")            # parms_id, coeff_count, scale


def parse_plaintext(data: bytes, n: int, limbs: int) -> np.ndarray:
    """A CKKS plaintext (NTT form, `limbs` primes) as uint64 (L, N)."""
    body = open_envelope(data, PT_META.size + HEADER.size + 8 + 8 * limbs * n)
    if len(body) < PT_META.size + HEADER.size + 8:
        raise CkksFormatError("SEAL plaintext truncated")
    (count,) = struct.unpack_from("<Q", body, PT_META.size + HEADER.size)
    off = PT_META.size + HEADER.size + 8
    if count != limbs * n or len(body) != off + 8 * count:
        raise CkksFormatError(f"SEAL plaintext holds {count} words, expected {limbs * n}")
    return np.frombuffer(body, dtype="<u8", count=count, offset=off).reshape(limbs, n).astype(np.uint64)
