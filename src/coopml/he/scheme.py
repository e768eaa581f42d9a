"""Zhou-Wornell integer-vector homomorphic encryption (paper section IV-C1), exact in Z_Q.

An n-vector x is encrypted as c' in Z_Q^(n+k) with S'c' = w x + e (mod Q), S' = [I_n, T].
The public key M = [S* - T A + E; A] switches the trivial ciphertext c = w x (key S = I) to S':
c' = M c*, with c* the signed l-bit digits of c and S* the matching powers-of-two expansion of
I, so S' M c* = S* c* + E c* = w x + E c*.

Every ciphertext carries worst-case bounds on its noise |e| and plaintext |x|; operations
propagate them and `decrypt` (and `check_budget`) refuse when decryption could be wrong:

    correct  <=  2 * noise_bound < w   and   w * (value_bound + 1) + noise_bound < Q / 2

(the first keeps round((w x + e) / w) = x, the second keeps w x + e from wrapping mod Q).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from coopml.errors import HEError
from coopml.he import ring


class NoiseOverflowError(HEError):
    """The worst-case noise or value bound no longer guarantees a correct decryption."""


class KeyMismatchError(HEError):
    """A ciphertext or key was used with a key it does not belong to."""


@dataclass(frozen=True)
class Params:
    """Scheme parameters; validated on construction.

    w: plaintext scale (must exceed twice any noise); k: secret dimension (columns of T);
    noise_bound: |E| entries of the key-switching matrices; secret_bound: |T| entries;
    plain_bound: largest |x| that `encrypt` accepts (fixes the digit count l);
    words: Q = 2^(64*words); encrypt_noise: optional extra |r| added to w x before switching
    (0 reproduces the paper's deterministic encryption).
    """

    w: int = 1 << 20
    k: int = 1
    noise_bound: int = 1
    secret_bound: int = 1 << 16
    plain_bound: int = 1 << 10
    words: int = 1
    encrypt_noise: int = 0

    def __post_init__(self) -> None:
        for name in ("w", "k", "noise_bound", "secret_bound", "plain_bound", "words", "encrypt_noise"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise HEError(f"Params.{name} must be an int, got {type(v).__name__}")
        if self.w < 2:
            raise HEError(f"Params.w must be >= 2, got {self.w}")
        if not 1 <= self.k <= 4096:
            raise HEError(f"Params.k must be in 1..4096, got {self.k}")
        if self.noise_bound < 0 or self.encrypt_noise < 0:
            raise HEError("Params.noise_bound and encrypt_noise must be >= 0")
        if self.secret_bound < 1 or self.plain_bound < 1:
            raise HEError("Params.secret_bound and plain_bound must be >= 1")
        if not 1 <= self.words <= 4:
            raise HEError(f"Params.words must be 1..4 (Q = 2^64 .. 2^256), got {self.words}")
        check_decryptable(self, self.fresh_noise, self.plain_bound, "fresh ciphertexts")

    @property
    def modulus(self) -> int:
        return ring.modulus(self.words)

    @property
    def digits(self) -> int:
        """l: signed binary digits of |w x + r| (paper: |c| < 2^l)."""
        return (self.w * self.plain_bound + self.encrypt_noise).bit_length()

    @property
    def fresh_noise(self) -> int:
        """Worst-case |e| of a fresh ciphertext: |E c*| <= l * noise_bound, plus encrypt_noise."""
        return self.digits * self.noise_bound + self.encrypt_noise

    def to_dict(self) -> dict[str, int]:
        return {f: int(getattr(self, f)) for f in
                ("w", "k", "noise_bound", "secret_bound", "plain_bound", "words", "encrypt_noise")}


def _key_id(m_words: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(m_words).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    """The key-switching matrix M ((n+k) x n*l over Z_Q): what contributors and verifiers get."""

    params: Params
    n: int
    m_words: np.ndarray  # (n+k, n*l, words) uint64
    key_id: str = ""

    def __post_init__(self) -> None:
        expect = (self.n + self.params.k, self.n * self.params.digits, self.params.words)
        if self.m_words.shape != expect or self.m_words.dtype != np.uint64:
            raise HEError(f"public key matrix has shape {self.m_words.shape} {self.m_words.dtype}, "
                          f"expected {expect} uint64 for n={self.n} and these params")
        object.__setattr__(self, "key_id", _key_id(self.m_words))

    @property
    def matrix(self) -> np.ndarray:
        return ring.to_ring(self.m_words)


@dataclass(frozen=True)
class SecretKey:
    """S' = [I_n, T]; T (n x k) is the secret. Never log it."""

    params: Params
    n: int
    t: np.ndarray = field(repr=False)  # (n, k) signed ints (int64)
    key_id: str = ""

    def __post_init__(self) -> None:
        if self.t.shape != (self.n, self.params.k):
            raise HEError(f"secret T has shape {self.t.shape}, expected {(self.n, self.params.k)}")

    def __repr__(self) -> str:
        return f"SecretKey(n={self.n}, k={self.params.k}, key_id={self.key_id!r})"

    @property
    def matrix(self) -> np.ndarray:
        """S' as ring elements (n x (n+k))."""
        s = np.concatenate([np.eye(self.n, dtype=np.int64), self.t.astype(np.int64)], axis=1)
        return ring.lift(s, self.params.words)


@dataclass(frozen=True)
class Ciphertext:
    """A batch of encrypted n-vectors: words (..., n+k, words). Bounds are worst case."""

    params: Params
    n: int
    words: np.ndarray
    noise_bound: int
    value_bound: int
    key_id: str

    def __post_init__(self) -> None:
        if self.words.ndim < 2 or self.words.shape[-2:] != (self.n + self.params.k, self.params.words):
            raise HEError(f"ciphertext array has shape {self.words.shape}, expected (..., "
                          f"{self.n + self.params.k}, {self.params.words})")

    @property
    def shape(self) -> tuple[int, ...]:
        """Batch shape (without the ciphertext axis)."""
        return self.words.shape[:-2]

    @property
    def data(self) -> np.ndarray:
        return ring.to_ring(self.words)

    def check_budget(self) -> None:
        check_decryptable(self.params, self.noise_bound, self.value_bound, "this ciphertext")


def check_decryptable(p: Params, noise: int, value: int, what: str) -> None:
    """Raise unless 2*noise < w and w*(value+1) + noise < Q/2 (decryption then is exact)."""
    if 2 * noise >= p.w:
        raise NoiseOverflowError(
            f"{what}: noise bound 2^{np.log2(float(max(noise, 1))):.1f} is not below w/2 = 2^"
            f"{np.log2(float(p.w)) - 1:.1f}: decryption could round wrongly; use a larger w (and words), "
            f"a smaller noise_bound or fewer/lighter operations")
    if p.w * (value + 1) + noise >= p.modulus // 2:
        raise NoiseOverflowError(
            f"{what}: w * value_bound + noise = 2^{np.log2(float(p.w * (value + 1) + noise)):.1f} does not fit "
            f"in Q/2 = 2^{64 * p.words - 1} and could wrap; use words={p.words + 1}, a smaller w or plain_bound")


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _switch_matrix(s_from: np.ndarray, bits: int, t_to: np.ndarray, params: Params,
                   rng: np.random.Generator) -> np.ndarray:
    """M with [I, T_to] M = S* + E, S* the MSB-first powers-of-two expansion of s_from (ring)."""
    words = params.words
    rows, cols = s_from.shape
    powers = ring.lift(np.array([1 << (bits - 1 - b) for b in range(bits)], dtype=object), words)
    s_star = reduce_mul(s_from[:, :, None], powers[None, None, :], words).reshape(rows, cols * bits)
    a = ring.uniform(rng, (params.k, cols * bits), words)
    e = rng.integers(-params.noise_bound, params.noise_bound + 1, size=(rows, cols * bits))
    t = ring.lift(t_to, words)
    top = ring.reduce(s_star - ring.reduce(t @ a, words) + ring.lift(e, words), words)
    return ring.to_words(np.concatenate([top, a], axis=0), words)


def reduce_mul(a: np.ndarray, b: np.ndarray, words: int) -> np.ndarray:
    return ring.reduce(a * b, words)


def keygen(params: Params, n: int = 1, rng: np.random.Generator | int | None = None
           ) -> tuple[SecretKey, PublicKey]:
    """Secret S' = [I_n, T] and public key-switching matrix M from S = I_n to S'."""
    if n < 1:
        raise HEError(f"plaintext length n must be >= 1, got {n}")
    g = _rng(rng)
    t = g.integers(-params.secret_bound, params.secret_bound + 1, size=(n, params.k), dtype=np.int64)
    eye = ring.lift(np.eye(n, dtype=np.int64), params.words)
    m = _switch_matrix(eye, params.digits, t, params, g)
    pk = PublicKey(params, n, m)
    return SecretKey(params, n, t, pk.key_id), pk


def _signed_digits(c: np.ndarray, bits: int) -> np.ndarray:
    """sign(c) * binary digits of |c|, MSB first: (..., n) -> (..., n*bits) in {-1, 0, 1}."""
    big = bits > 62
    mag = np.abs(c)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    if big:
        shifts = shifts.astype(object)
    d = ((mag[..., None] >> shifts) & 1).astype(np.int64)
    sign = np.where(c < 0, -1, 1).astype(np.int64)
    d = d * sign[..., None]
    return d.reshape(*c.shape[:-1], c.shape[-1] * bits)


def encrypt(pk: PublicKey, x: np.ndarray, rng: np.random.Generator | int | None = None) -> Ciphertext:
    """Encrypt integer vectors x (..., n) with |x| <= plain_bound: c' = M c*, c* digits of w x (+ r)."""
    p = pk.params
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise HEError(f"encrypt takes integer arrays, got {x.dtype}; scale floats first (coopml.he.scaling)")
    if x.ndim == 0 or x.shape[-1] != pk.n:
        raise HEError(f"plaintext last axis must have length n={pk.n}, got shape {x.shape}")
    x = x.astype(np.int64)
    vmax = int(np.abs(x).max()) if x.size else 0
    if vmax > p.plain_bound:
        raise HEError(f"plaintext value {vmax} exceeds plain_bound {p.plain_bound}")
    c = x * p.w if p.digits <= 62 else x.astype(object) * p.w
    if p.encrypt_noise:
        c = c + _rng(rng).integers(-p.encrypt_noise, p.encrypt_noise + 1, size=c.shape)
    digits = _signed_digits(c, p.digits)
    m = pk.matrix
    out = ring.reduce(ring.lift(digits, p.words) @ m.T, p.words)
    return Ciphertext(p, pk.n, ring.to_words(out, p.words), p.fresh_noise, vmax, pk.key_id)


def decrypt(sk: SecretKey, ct: Ciphertext) -> np.ndarray:
    """x = round(S'c' / w), after checking the noise budget (raises NoiseOverflowError)."""
    if ct.key_id != sk.key_id:
        raise KeyMismatchError(f"ciphertext belongs to key {ct.key_id}, secret key is {sk.key_id}")
    if ct.n != sk.n or ct.params != sk.params:
        raise KeyMismatchError("ciphertext and secret key have different parameters or dimension")
    ct.check_budget()
    p = ct.params
    c = ct.data
    t = ring.lift(sk.t, p.words)
    v = ring.reduce(c[..., :sk.n] + c[..., sk.n:] @ t.T, p.words)
    v = ring.signed(v, p.words)
    out = (v + p.w // 2) // p.w
    return out.astype(np.int64) if p.words == 1 or out.size == 0 or np.abs(out).max() < 2**62 else out


def _same_key(a: Ciphertext, b: Ciphertext) -> None:
    if a.key_id != b.key_id or a.params != b.params or a.n != b.n:
        raise KeyMismatchError("ciphertexts under different keys cannot be combined")


def add(a: Ciphertext, b: Ciphertext) -> Ciphertext:
    """Enc(x) + Enc(y) = Enc(x + y): noise bounds add."""
    _same_key(a, b)
    if a.shape != b.shape:
        raise HEError(f"cannot add ciphertext batches of shapes {a.shape} and {b.shape}")
    w = a.params.words
    out = ring.reduce(a.data + b.data, w)
    return Ciphertext(a.params, a.n, ring.to_words(out, w), a.noise_bound + b.noise_bound,
                      a.value_bound + b.value_bound, a.key_id)


def add_plain(a: Ciphertext, x: np.ndarray) -> Ciphertext:
    """Enc(x) + y with y in the clear: add w*y to the identity part (noise unchanged)."""
    x = np.asarray(x, dtype=np.int64)
    if x.shape[-1:] != (a.n,):
        raise HEError(f"plaintext last axis must be n={a.n}, got {x.shape}")
    w = a.params.words
    data = a.data.copy()
    data[..., :a.n] = ring.reduce(data[..., :a.n] + ring.lift(x.astype(object) * a.params.w, w), w)
    return Ciphertext(a.params, a.n, ring.to_words(data, w), a.noise_bound,
                      a.value_bound + int(np.abs(x).max(initial=0)), a.key_id)


def matmul_plain(g: np.ndarray, a: Ciphertext) -> Ciphertext:
    """Plaintext integer matrix over the batch axis: Enc(x_j)_j -> Enc(sum_j G_ij x_j)_i.

    Every component is mapped by the same G, so this is an ordinary integer matmul per
    component; noise and value bounds grow by max_i sum_j |G_ij|."""
    g = np.asarray(g, dtype=np.int64)
    if g.ndim != 2 or a.shape != (g.shape[1],):
        raise HEError(f"matmul_plain needs G (r, m) and a ciphertext batch of shape (m,); "
                      f"got G {g.shape} and batch {a.shape}")
    w = a.params.words
    out = ring.reduce(ring.lift(g, w) @ a.data, w)
    growth = int(np.abs(g).sum(axis=1).max(initial=0))
    return Ciphertext(a.params, a.n, ring.to_words(out, w), a.noise_bound * growth,
                      a.value_bound * growth, a.key_id)


def inner_product(a: Ciphertext, v: np.ndarray) -> Ciphertext:
    """Weighted inner product with plaintext weights: Enc(x_j)_j, v -> Enc(sum_j v_j x_j)."""
    v = np.asarray(v, dtype=np.int64)
    if v.ndim != 1:
        raise HEError(f"inner_product weights must be a vector, got shape {v.shape}")
    out = matmul_plain(v[None, :], a)
    return Ciphertext(out.params, out.n, out.words[0], out.noise_bound, out.value_bound, out.key_id)


@dataclass(frozen=True)
class LinearTransformKey:
    """Key-switching matrix from G S' to a fresh S'' (made by the secret-key holder)."""

    g: np.ndarray
    m_words: np.ndarray
    key_id_in: str
    key_id_out: str
    params: Params


def linear_transform_key(sk: SecretKey, g: np.ndarray, rng: np.random.Generator | int | None = None
                         ) -> tuple[LinearTransformKey, SecretKey]:
    """Zhou-Wornell linear transformation: a ciphertext of x under S' is one of Gx under G S';
    this switch matrix brings it to a new key [I, T''] of dimension rows(G)."""
    g = np.asarray(g, dtype=np.int64)
    if g.ndim != 2 or g.shape[1] != sk.n:
        raise HEError(f"G must have shape (r, {sk.n}), got {g.shape}")
    p = sk.params
    rgen = _rng(rng)
    t_out = rgen.integers(-p.secret_bound, p.secret_bound + 1, size=(g.shape[0], p.k), dtype=np.int64)
    s_from = ring.reduce(ring.lift(g, p.words) @ sk.matrix, p.words)
    m = _switch_matrix(s_from, 64 * p.words, t_out, p, rgen)
    key_out = "lt-" + _key_id(m)[:13]
    return (LinearTransformKey(g, m, sk.key_id, key_out, p), SecretKey(p, g.shape[0], t_out, key_out))


def linear_transform(ksk: LinearTransformKey, a: Ciphertext) -> Ciphertext:
    """Enc_{S'}(x) -> Enc_{S''}(G x) by switching with the full unsigned bits of c."""
    if a.key_id != ksk.key_id_in or a.params != ksk.params:
        raise KeyMismatchError(f"transform key is for {ksk.key_id_in}, ciphertext is under {a.key_id}")
    p = a.params
    bits = 64 * p.words
    w64 = a.words  # (..., n+k, words) -> unsigned bits MSB first per component
    parts = []
    for word in range(p.words - 1, -1, -1):
        shifts = np.arange(63, -1, -1, dtype=np.uint64)
        parts.append(((w64[..., word][..., None] >> shifts) & np.uint64(1)).astype(np.int64))
    digits = np.concatenate(parts, axis=-1).reshape(*a.shape, (a.n + p.k) * bits)
    m = ring.to_ring(ksk.m_words)
    out = ring.reduce(ring.lift(digits, p.words) @ m.T, p.words)
    growth = int(np.abs(ksk.g).sum(axis=1).max(initial=0))
    noise = a.noise_bound * growth + (a.n + p.k) * bits * p.noise_bound
    return Ciphertext(p, ksk.g.shape[0], ring.to_words(out, p.words), noise, a.value_bound * growth,
                      ksk.key_id_out)
