"""Layer-by-layer encrypted inference (verifier side): every layer is one exact GEMM.

The paper's flow (Figs. 5 and 6): the verifier's plaintext inputs meet the encrypted first
layer, and the resulting ciphertexts go through the following layers one at a time. Here:

- the first layer has Z_Q weights and plaintext inputs: the inputs are unfolded (im2col) once
  and multiplied by the Z_Q weights cut into float64 limbs narrow enough for exact sums, all
  ciphertext components and limbs as columns of ONE GEMM;
- every later layer has plaintext integer weights and Z_Q activations: the activations are
  float64 limbs (`coopml.he.limbs`), all limbs and ciphertext components stacked as rows of ONE
  GEMM per layer (convolutions by im2col on an NHWC layout); carries are propagated only when
  the next layer needs the headroom, and the limb width is re-chosen per layer from the layer's
  row L1 norm (wider limbs -> fewer rows);
- sum pooling and biases (w * b, a trivial encryption, added to the identity component) are
  exact additions on limbs;
- when every later layer's weights fit int8 (Table IV's do at p <= 2^7), those layers run on
  the activations' bytes instead (`coopml.he.digits`): 16 digits per 128-bit value but int8
  GEMMs, which this CPU runs ~20x faster than float64 GEMMs of the same narrow shape; same
  words, 1.3x faster overall on Table IV.

No Python integers and no collapsed operator: the cost is (components x limbs) times the
plaintext layer's multiply-adds, in float64, plus a few elementwise passes per limb. Results
are exact mod Q and equal, word for word, the collapsed operator of `coopml.he.model.prepare`.

The computation stops at the first nonlinearity (ReLU, polynomial activation): IVHE cannot
evaluate it on ciphertexts (docs/he.md); what comes out is the ciphertext of the linear
prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coopml.errors import HEError
from coopml.he import digits as dg
from coopml.he import limbs as lb
from coopml.he import ring
from coopml.he.im2col import conv_nhwc as _conv
from coopml.he.im2col import output_size
from coopml.he.scaling import IntLayer, pair

# images per chunk: the activations after the first layer (per limb and component) near 64 MB
TARGET_BYTES = 64 << 20
# first-layer GEMM outputs per block (then bias, pooling and carries while the block is in cache)
FIRST_BYTES = 16 << 20


@dataclass
class LayeredOutput:
    """Words of the prefix output. `ident` (comps, N, *shape, W) in NHWC for 4-D activations or
    (comps, N, F, W) when flat; `resid` (N, k, H*W, W) for matrix-pair-wise models whose tail mixes
    channels (the k extra channels that ride along), else None."""

    ident: np.ndarray
    resid: np.ndarray | None
    flat: bool


def _weights(layer: IntLayer) -> tuple[np.ndarray, np.ndarray]:
    if layer.weight is None or layer.bias is None:
        raise HEError(f"{layer.kind} layer without weights")
    return layer.weight, layer.bias


def _conv_matrix(weight: np.ndarray) -> np.ndarray:
    """torch conv weight (Cout, Cin, kh, kw) -> (kh*kw*Cin, Cout) float64, matching `_unfold`."""
    return weight.transpose(2, 3, 1, 0).reshape(-1, weight.shape[0]).astype(np.float64)


def _l1(g: np.ndarray) -> float:
    """Max over output columns of sum |g|: the growth of max |limb| through x @ g."""
    return float(np.abs(g).sum(axis=0).max(initial=0.0)) + 1.0   # + 1: room for the bias add


def _pool(x: np.ndarray, size: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    """Non-overlapping sum pooling over two axes (floor mode, as avg_pool2d)."""
    kh, kw = size
    a, b = axes
    h, w = x.shape[a] // kh * kh, x.shape[b] // kw * kw
    idx = [slice(None)] * x.ndim
    idx[a], idx[b] = slice(0, h), slice(0, w)
    x = x[tuple(idx)]
    shape = list(x.shape)
    shape[b:b + 1] = [w // kw, kw]
    shape[a:a + 1] = [h // kh, kh]
    return x.reshape(shape).sum(axis=(a + 1, b + 2))


def _next_growth(layers: list[IntLayer], start: int) -> float:
    """Growth of max |limb| from layer `start` through the next weighted layer (pools included)."""
    growth = 1.0
    for layer in layers[start:]:
        if layer.kind == "sumpool":
            kh, kw = pair(layer.size)
            growth *= kh * kw
        elif layer.kind == "conv":
            return growth * _l1(_conv_matrix(_weights(layer)[0]))
        elif layer.kind == "linear":
            return growth * _l1(_weights(layer)[0].T.astype(np.float64))
        elif not layer.is_linear:
            break
    return growth


def _bias_words(bias: np.ndarray, w: int, words: int) -> np.ndarray:
    """Words (C, W) of the trivial encryption w * b (identity component only)."""
    return ring.to_words(ring.lift(np.asarray(bias).astype(object) * w, words), words)


def _bias_limbs(bias: np.ndarray, w: int, like: lb.Limbs) -> np.ndarray:
    """Limbs (L, C) of the trivial encryption w * b (identity component only)."""
    return lb.from_words(_bias_words(bias, w, like.total // 64), like.bits).data


def _tail_matrix(layer: IntLayer, hwc: tuple[int, ...]) -> np.ndarray:
    """The layer's weights as the right operand (K, Cout) of its GEMM: convolutions in the
    (kh, kw, Cin) row order of the im2col, linear layers after a flatten re-ordered from torch's
    (C, H, W) to our (H, W, C)."""
    weight, _ = _weights(layer)
    if layer.kind == "conv":
        return _conv_matrix(weight)
    g = weight.astype(np.float64)
    if hwc:
        h_, w_, c_ = hwc
        g = g.reshape(-1, c_, h_, w_).transpose(0, 2, 3, 1).reshape(g.shape[0], -1)
    return g.T


def _digits_fit(layers: list[IntLayer]) -> bool:
    """Whether the tail can run on byte digits (coopml.he.digits): linear layers only, every
    weight within int8."""
    for layer in layers:
        if layer.kind in ("conv", "linear"):
            g = _tail_matrix(layer, ())
            if not dg.fits(g, g.shape[0]):
                return False
        elif layer.kind not in ("sumpool", "flatten"):
            return False
    return True


def run(k_words: np.ndarray, bias_words: np.ndarray, first: IntLayer, kernel: tuple[int, int],
        input_shape: tuple[int, ...], layers: list[IntLayer], x: np.ndarray, w: int, comps: int,
        channels: int, extra: int, chunk: int | None = None, int8: bool = True,
        merge_pools: bool = True) -> LayeredOutput:
    """Evaluate the encrypted first layer and the linear `layers` after it on plaintext inputs x.

    k_words (K, Cout', W): the first layer's Z_Q weights with K in torch's (Cin, kh, kw) order and
    Cout' = comps * channels + extra columns, component-major (element-wise: comps = 1 + k,
    extra = 0; matrix-pair-wise: comps = 1, `extra` = k key channels after the `channels`
    identity channels); bias_words (Cout', W). x (N, *input_shape) plaintext integers. With
    `int8` the layers after the first run on byte digits with int8 GEMMs when their weights fit
    int8 (`_digits_fit`); else, or with int8=False, on float64 limbs. With `merge_pools` a
    convolutional first layer and the sum pools right after it run as one strided convolution
    (`merge_pools_into_kernel`), unless the matrix-pair-wise key channels must leave before the
    pooling. Same words in every case."""
    n_total = len(x)
    conv = first.kind == "conv"
    words = k_words.shape[-1]
    total = 64 * words
    x = np.asarray(x, dtype=np.float64).reshape(n_total, *input_shape)
    if conv:
        if len(input_shape) != 3:
            raise HEError(f"a convolutional first layer needs (C, H, W) inputs, got {input_shape}")
        x = x.transpose(0, 2, 3, 1)                                   # NHWC
    if conv:                                                          # (Cin, kh, kw) -> (kh, kw, Cin) rows
        cin = input_shape[0]
        k_words = k_words.reshape(cin, kernel[0], kernel[1], *k_words.shape[1:]).transpose(1, 2, 0, 3, 4) \
            .reshape(k_words.shape)
    lead = 0                                                          # sum pools right after the first layer
    lead_growth = 1.0
    while conv and lead < len(layers) and layers[lead].kind == "sumpool":
        kh, kw = pair(layers[lead].size)
        lead_growth *= kh * kw
        lead += 1
    rest = layers[lead:]
    mixes = any(layer.kind in ("conv", "linear") for layer in rest)
    stride = pair(first.stride) if conv else (1, 1)
    block_pools = layers[:lead]                                       # pools applied to each GEMM block
    pool_sizes = [pair(p.size) for p in block_pools]
    merged = merge_pools and conv and lead > 0 and not (extra and mixes) and _merge_pays(kernel, stride, pool_sizes)
    if merged:
        k5 = k_words.reshape(kernel[0], kernel[1], input_shape[0], *k_words.shape[1:])
        k5, kernel, stride = merge_pools_into_kernel(k5, kernel, stride, pool_sizes)
        k_words, block_pools = k5.reshape(-1, *k5.shape[3:]), []
    cout = k_words.shape[1]
    if chunk is None:
        positions = int(np.prod(input_shape[1:])) if conv else 1
        chunk = max(1, min(n_total, TARGET_BYTES // max(1, positions * cout * 8)))
    outs, resids = [], []
    chans = channels + extra if extra and not mixes else channels
    digits = int8 and _digits_fit(rest)
    growth = 1.0 if digits else _next_growth(rest, 0)     # digits: no rebase for the next GEMM
    for lo in range(0, n_total, chunk):
        xb = x[lo:lo + chunk]
        n = len(xb)
        # max row L1 of the unfolded inputs, bounded by max|x| * taps for convolutions; every
        # pooled position also sums lead_growth biases (one per conv output it pools)
        taps = int(np.prod(kernel)) * input_shape[0] if conv else int(np.prod(input_shape))
        a_l1 = float(np.abs(xb).max(initial=0.0)) * taps
        reach = a_l1 + lead_growth if merged else (a_l1 + 1.0) * lead_growth     # max |output| / max |limb|
        bits = lb.bits_for(reach, total)
        kl = lb.from_words(k_words, bits)                                # (L, K, Cout')
        count = kl.count
        g = kl.data.transpose(1, 0, 2).reshape(kl.data.shape[1], count * cout)
        bias = lb.from_words(bias_words, bits).data                      # (L, Cout')
        bound = kl.bound * reach
        # the next weighted layer's limb width, when these limbs would not fit its GEMM
        bits2 = lb.bits_for(growth, total) if bound * growth >= lb.EXACT else bits
        count2 = lb.limb_count(total, bits2)
        dest: np.ndarray | None = None
        resid_chunk = []
        ho, wo = output_size(pair(input_shape[1:]), kernel, stride, pair(first.padding)) if conv else (1, 1)
        out_positions = ho * wo
        step = max(1, FIRST_BYTES // max(1, out_positions * count * cout * 8))
        for s0 in range(0, n, step):                 # cache-sized blocks: GEMM, bias, pool, carry
            xs = xb[s0:s0 + step]
            m = len(xs)
            if conv:                                 # ONE GEMM for all limbs and components
                h = _conv(xs, g, kernel, stride, pair(first.padding))
            else:
                h = xs.reshape(m, -1) @ g
            h = h.reshape(*h.shape[:-1], count, cout)
            if extra and mixes:
                # matrix-pair-wise: the k extra key channels ride along, leaving here (before any
                # pooling: the initiator's key for them is the tail's G) as words
                e = np.moveaxis(h[..., comps * channels:] + bias[:, comps * channels:], -2, 0)   # (L, m, *sp, k)
                ew = lb.to_words(lb.Limbs(np.ascontiguousarray(e), bits, total, bound))
                resid_chunk.append(np.moveaxis(ew.reshape(m, -1, extra, words), 2, 1))   # (m, k, hw, W)
                h = h[..., :comps * channels]
            for layer in block_pools:
                h = _pool(h, pair(layer.size), (1, 2))
            h += bias[:, :h.shape[-1]] * lead_growth               # every pooled position summed this many biases
            spatial = h.shape[1:-2]
            d = h.reshape(m, *spatial, count, comps, chans)
            d = np.moveaxis(np.moveaxis(d, -3, 0), -2, 1)                 # (L, comps, m, *spatial, C)
            block = lb.Limbs(d, bits, total, bound)
            if bits2 != bits:
                block = lb.rebase(block, bits2)
            if dest is None:
                dest = np.empty((count2, comps, n, *spatial, chans), dtype=np.float64)
            dest[:, :, s0:s0 + m] = block.data
        assert dest is not None
        act = lb.Limbs(dest.reshape(count2, comps * n, *dest.shape[3:]), bits2, total,
                       bound if bits2 == bits else 2.0 ** (bits2 - 1))
        if resid_chunk:
            resids.append(np.concatenate(resid_chunk))
        if digits:
            words_out, flat = _tail_digits(dg.from_limbs(act), rest, w, n, not conv)
            outs.append(words_out)
        else:
            act, flat = _tail(act, rest, w, n, not conv)
            outs.append(lb.to_words(act))
    ident_words = _regroup(outs, comps)
    return LayeredOutput(ident_words, np.concatenate(resids) if resids else None, flat)


def _merged_geometry(kernel: tuple[int, int], stride: tuple[int, int],
                     pools: list[tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Kernel size and stride of a convolution merged with the sum pools after it (each s x s
    pool of a stride-d conv with a k-wide kernel: kernel d*(s-1) + k, stride d*s)."""
    (kh, kw), (dh, dw) = kernel, stride
    for sh, sw in pools:
        kh, kw = dh * (sh - 1) + kh, dw * (sw - 1) + kw
        dh, dw = dh * sh, dw * sw
    return (kh, kw), (dh, dw)


def _merge_pays(kernel: tuple[int, int], stride: tuple[int, int], pools: list[tuple[int, int]]) -> bool:
    """Whether the merged kernel has no more taps than the pooled outputs' conv taps it replaces
    (a stride beyond the kernel leaves gaps in the merged kernel: then conv, then pool)."""
    (mh, mw), _ = _merged_geometry(kernel, stride, pools)
    pooled = int(np.prod([sh * sw for sh, sw in pools]))
    return mh * mw <= pooled * kernel[0] * kernel[1]


def merge_pools_into_kernel(k_words: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                            pools: list[tuple[int, int]]) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """A convolution followed by non-overlapping sum pools as ONE strided convolution: pooling
    s x s outputs of a stride-d convolution with a k x k kernel reads the inputs at d*s*o + d*a + u
    (a < s pooled offset, u < k tap), so it is a convolution with a (d*(s-1) + k)-wide kernel, the
    sum of the s*s copies of the kernel shifted by d*a, at stride d*s (same padding; floor mode
    gives the same output size). Exact in Z_Q: the kernel words are added mod Q.

    Why: on ciphertexts the first layer's output is (limbs x components) times the plaintext's
    and is computed in float64, so the full-resolution output (1.6 MB per image for Table IV) and
    its pooling cost more than the GEMM; merged, the GEMM has 36/100 of the multiply-adds at 5x5
    -> 2x2 and writes a quarter of the output. The float32 plaintext model gains even more from
    the same rewrite (2.8-3.5x on Table IV), so it speeds up the verifier without improving the
    encrypted/plaintext ratio: docs/he.md reports both.

    k_words (kh, kw, Cin, Cout', W) uint64 words -> the merged kernel's words, its size, stride."""
    for size in pools:
        (kh, kw), (dh, dw) = kernel, stride
        kernel2, stride2 = _merged_geometry(kernel, stride, [size])
        out = np.zeros((*kernel2, *k_words.shape[2:]), dtype=np.uint64)
        for a in range(size[0]):
            for b in range(size[1]):
                window = out[dh * a:dh * a + kh, dw * b:dw * b + kw]
                window[...] = ring.add_words(window, k_words)
        k_words, kernel, stride = out, kernel2, stride2
    return k_words, kernel, stride


def _regroup(outs: list[np.ndarray], comps: int) -> np.ndarray:
    """Chunks of (comps*n, ..., W) words -> (comps, N, ..., W)."""
    parts = [o.reshape(comps, o.shape[0] // comps, *o.shape[1:]) for o in outs]
    return np.concatenate(parts, axis=1)


def _tail(act: lb.Limbs, layers: list[IntLayer], w: int, n: int, flat: bool) -> tuple[lb.Limbs, bool]:
    """The plaintext-weight layers on limb activations (L, comps*n, H, W, C) or (L, comps*n, F).
    Biases w * b go to rows [0, n): the identity component."""
    hwc: tuple[int, ...] = ()
    for i, layer in enumerate(layers):
        if layer.kind == "sumpool":
            size = pair(layer.size)
            growth = size[0] * size[1]
            if act.bound * growth >= lb.EXACT:
                act = lb.rebase(act, lb.bits_for(_next_growth(layers, i), act.total))
            act = act.replace(_pool(act.data, size, (2, 3)), act.bound * growth)
        elif layer.kind == "flatten":
            if not flat:
                hwc = tuple(act.data.shape[2:])
                act = act.replace(act.data.reshape(act.count, act.data.shape[1], -1), act.bound)
                flat = True
        elif layer.kind in ("conv", "linear"):
            weight, layer_bias = _weights(layer)
            g = _tail_matrix(layer, hwc)       # torch flattens (C, H, W); our activations are (H, W, C)
            hwc = ()
            l1 = _l1(g)
            if act.bound * l1 >= lb.EXACT:
                act = lb.rebase(act, lb.bits_for(_next_growth(layers, i), act.total))
            if layer.kind == "conv":
                out = _conv(act.data.reshape(-1, *act.data.shape[2:]), g,
                            (weight.shape[2], weight.shape[3]), pair(layer.stride), pair(layer.padding))
                out = out.reshape(act.count, act.data.shape[1], *out.shape[1:])
            else:
                out = (act.data.reshape(-1, act.data.shape[-1]) @ g).reshape(act.count, act.data.shape[1], -1)
            act = act.replace(out, act.bound * (l1 - 1.0) if l1 > 1.0 else act.bound)
            bias = _bias_limbs(layer_bias, w, act)                      # (L, Cout)
            shape = (act.count,) + (1,) * (out.ndim - 2) + (bias.shape[1],)
            act.data[:, :n] += bias.reshape(shape)                      # identity component: rows [0, n)
            act = act.replace(act.data, act.bound + 2.0 ** (act.bits - 1))
        else:
            raise HEError(f"layer {layer.kind} cannot be evaluated on ciphertexts")
    return act, flat


def _tail_digits(x: np.ndarray, layers: list[IntLayer], w: int, n: int, flat: bool) -> tuple[np.ndarray, bool]:
    """`_tail` on byte digits with int8 GEMMs (coopml.he.digits), when `_digits_fit(layers)`.
    Bytes (D, comps*n, H, W, C) or (D, comps*n, F) -> the output words (comps*n, ..., D/8). Digit
    sums stay exact int64 through pooling and are carried back to bytes before the next GEMM."""
    words = x.shape[0] // 8
    sums: np.ndarray | None = None               # exact digit sums, not yet carried (int32 while they fit)
    bound = 255.0                                # max |digit sum|
    hwc: tuple[int, ...] = ()
    for layer in layers:
        if layer.kind == "sumpool":
            size = pair(layer.size)
            bound *= size[0] * size[1]
            cur = x.astype(np.int32) if sums is None else sums
            if bound >= 2.0 ** 31 and cur.dtype != np.int64:
                cur = cur.astype(np.int64)
            sums = _pool(cur, size, (2, 3))
        elif layer.kind == "flatten":
            if not flat:
                cur = x if sums is None else sums
                hwc = tuple(cur.shape[2:])
                cur = cur.reshape(cur.shape[0], cur.shape[1], -1)
                x, sums = (cur, None) if sums is None else (x, cur)
                flat = True
        else:                                    # conv or linear (`_digits_fit` admitted nothing else)
            if sums is not None:
                x, sums = dg.normalize(sums), None
            weight, layer_bias = _weights(layer)
            g = _tail_matrix(layer, hwc)
            hwc = ()
            if layer.kind == "conv":
                sums = dg.conv(x, g, (weight.shape[2], weight.shape[3]), pair(layer.stride), pair(layer.padding))
            else:
                sums = dg.linear(x, g)
            bound = 255.0 * (_l1(g) - 1.0) + 255.0          # + 255: a digit of the bias
            if bound >= 2.0 ** 31:
                sums = sums.astype(np.int64)
            bias = dg.from_words(_bias_words(layer_bias, w, words))          # (D, Cout)
            sums[:, :n] += bias.reshape(bias.shape[0], *(1,) * (sums.ndim - 2), bias.shape[1])
    if sums is not None:
        x = dg.normalize(sums)
    return dg.to_words(x), flat
