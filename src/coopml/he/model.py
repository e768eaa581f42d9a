"""Encrypted models (paper IV-C2): the first layer is encrypted, the rest stays scaled integers.

Strategies:
- "element-wise": every first-layer weight and bias is a length-1 plaintext; its ciphertext
  adds a trailing axis of 1+k components ("third dimension", Fig. 5).
- "matrix-pair-wise": the first layer is encrypted along its output channels (for a conv
  m x 1 x r -> m x 1 x (r+k), Fig. 6); the next layer consumes the r identity channels with its
  plaintext weights while the k extra channels ride along, so the second layer's key becomes
  W2 T, which only the initiator (holding T, and the model once bought) can form.

Encrypted inference (verifier side, plaintext scaled inputs), two exact ways:
- layer by layer (`encrypted_infer_layered`, `coopml.he.layered`): the paper's flow, every layer
  one exact float64-limb GEMM over all ciphertext components;
- collapsed (`prepare`): when every layer is linear, the whole map input -> output ciphertext
  components is a fixed matrix over Z_Q, built once (the integer tail's transpose G by exact
  float64 backward, pushed through the encrypted first layer limb by limb); inference is then
  one exact limb matmul. Same linear algebra, reassociated.
Both give the same words mod Q; decrypted outputs equal `integer_forward` bit for bit (tests/he).

Networks with a nonlinearity (ReLU, polynomial activation): IVHE evaluates only linear maps with
plaintext weights on ciphertexts, so encrypted inference stops at the first nonlinearity and
returns the ciphertext of that linear prefix; `decrypt_outputs` (the key holder's side)
decrypts it and finishes the network on plaintext integers (docs/he.md, Case Study IV).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coopml.errors import HEError
from coopml.he import layered, ring
from coopml.he.ring import FLOAT_EXACT
from coopml.he.scaling import (
    IntegerNet,
    IntLayer,
    apply_layer,
    dequantize,
    forward_layers,
    integer_forward,
    pair,
    quantize,
)
from coopml.he.scheme import (
    Ciphertext,
    KeyMismatchError,
    NoiseOverflowError,
    PublicKey,
    SecretKey,
    decrypt,
    encrypt,
)

STRATEGIES = ("element-wise", "matrix-pair-wise")


@dataclass
class Prepared:
    """Per-model inference operator over Z_Q (built once by `prepare`)."""

    k_words: np.ndarray          # (D_in, columns, W)
    bias_words: np.ndarray       # (columns, W)
    noise_op: np.ndarray         # (D_in, O) float64: |noise| per unit fresh noise and |x|
    noise_const: np.ndarray      # (O,)
    value_op: np.ndarray         # (D_in, O): |y| per |x| with first-layer weights at weight_bound
    value_const: np.ndarray      # (O,)
    tail_g: np.ndarray           # (O, first-layer output size) int64, for matrix-pair-wise decryption


@dataclass
class EncryptedModel:
    """A contributor's model with its first layer encrypted; self-describing for transport."""

    arch: str
    strategy: str
    p: int
    q: int
    input_shape: tuple[int, ...]      # per example, e.g. (1, 28, 28)
    first_weight: Ciphertext          # element-wise: batch = weight shape, n=1; mpw: batch = weight[0].shape, n=out
    first_bias: Ciphertext            # element-wise: batch (out,), n=1; mpw: batch (), n=out
    first_layer: IntLayer             # kind/stride/padding (weight/bias None: they are encrypted)
    first_shape: tuple[int, ...]
    tail: IntegerNet                  # layers after the first (plaintext integers); scales are full-net
    weight_bound: int                 # declared max |first-layer integer| (public)
    lead: int = 0                     # Flatten layers before the first (encrypted) layer
    _prepared: Prepared | None = field(default=None, repr=False, compare=False)

    @property
    def params(self):
        return self.first_weight.params

    @property
    def key_id(self) -> str:
        return self.first_weight.key_id

    @property
    def output_scale(self) -> int:
        return self.tail.output_scale

    @property
    def split(self) -> int:
        """Index in tail.layers of the first nonlinear layer (len(tail.layers) if none)."""
        return next((i for i, layer in enumerate(self.tail.layers) if not layer.is_linear), len(self.tail.layers))

    @property
    def is_linear(self) -> bool:
        return self.split == len(self.tail.layers)


def _check_pk(pk: PublicKey, strategy: str, out_channels: int) -> None:
    if strategy not in STRATEGIES:
        raise HEError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    need = 1 if strategy == "element-wise" else out_channels
    if pk.n != need:
        raise KeyMismatchError(f"{strategy} encryption of this model needs a key for n={need}, "
                               f"the public key has n={pk.n} (keygen(params, n={need}))")


def encrypt_model(pk: PublicKey, model: nn.Module, p: int, q: int = 1000,
                  strategy: str = "element-wise", input_shape: tuple[int, ...] = (1, 28, 28),
                  rng: np.random.Generator | int | None = None) -> EncryptedModel:
    """Scale `model` (weights x p, inputs x q) and encrypt its first layer with `pk`."""
    net = quantize(model, p, q)
    lead = next(i for i, layer in enumerate(net.layers) if layer.kind in ("conv", "linear"))
    first = net.layers[lead]
    first_weight, first_bias = first.params()
    out_ch = first_weight.shape[0]
    _check_pk(pk, strategy, out_ch)
    wmax = int(max(np.abs(first_weight).max(), np.abs(first_bias).max()))
    if wmax > pk.params.plain_bound:
        raise HEError(f"first-layer integers reach {wmax} > plain_bound {pk.params.plain_bound}: "
                      f"lower p or use params with a larger plain_bound")
    if strategy == "element-wise":
        ct_w = encrypt(pk, first_weight[..., None], rng)
        ct_b = encrypt(pk, first_bias[..., None], rng)
    else:
        ct_w = encrypt(pk, np.moveaxis(first_weight, 0, -1), rng)   # (in, kh, kw, out) vectors
        ct_b = encrypt(pk, first_bias, rng)
    shell = IntLayer(first.kind, None, None, first.stride, first.padding, first.size)
    tail = IntegerNet(net.layers[lead + 1:], p, q, net.scales)
    arch = getattr(model, "arch", "") or "sequential"
    return EncryptedModel(arch, strategy, p, q, tuple(input_shape), ct_w, ct_b, shell,
                          tuple(first_weight.shape), tail, wmax, lead)


def _first_out_shape(enc: EncryptedModel) -> tuple[int, ...]:
    x = torch.zeros(1, *enc.input_shape, dtype=torch.float64)
    if enc.first_layer.kind == "linear":
        x = x.flatten(1)
    w = torch.zeros(enc.first_shape, dtype=torch.float64)
    layer = enc.first_layer
    return tuple(apply_layer(IntLayer(layer.kind, None, None, layer.stride, layer.padding), x, w,
                             bias=False).shape[1:])


def _tail_transpose(enc: EncryptedModel, absolute: bool) -> np.ndarray:
    """G (O, *first_out) with y = G . h1 + const for the bias-free integer tail (exact float64)."""
    h = torch.zeros(1, *_first_out_shape(enc), dtype=torch.float64, requires_grad=True)
    y = h
    for layer in enc.tail.layers:
        y = apply_layer(layer, y, bias=False, absolute=absolute)
    if y.dim() != 2 or y.shape[0] != 1:
        raise HEError("the network must end in a flat output vector (Flatten + Linear)")
    rows = [torch.autograd.grad(y[0, o], h, retain_graph=True)[0][0] for o in range(y.shape[1])]
    g = torch.stack(rows)
    return g.numpy()


def _tail_const(enc: EncryptedModel) -> np.ndarray:
    h = np.zeros((1, *_first_out_shape(enc)), dtype=np.int64)
    return integer_forward(IntegerNet(enc.tail.layers, enc.p, enc.q, enc.tail.scales), h)[0]


def _first_transpose(enc: EncryptedModel, g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Adjoint of the (bias-free) first layer applied to rows of g: (O, *out) -> (O, D_in)."""
    layer = enc.first_layer
    if layer.kind == "linear":
        return g @ weight
    h_in = enc.input_shape[1:]
    (sh, sw), (ph, pw) = pair(layer.stride), pair(layer.padding)
    kh, kw = weight.shape[-2:]
    # input rows/columns a strided convolution never reached (output_padding, not zero padding:
    # they sit before the crop of `padding`)
    extra = ((h_in[0] + 2 * ph - kh) % sh, (h_in[1] + 2 * pw - kw) % sw)
    out = F.conv_transpose2d(g, weight, stride=(sh, sw), padding=(ph, pw), output_padding=extra)
    return out.flatten(1)


def _exact_first_transpose(enc: EncryptedModel, g: np.ndarray, g_abs_bound: np.ndarray,
                           w_words: np.ndarray) -> np.ndarray:
    """first_layer^T(G) with Z_Q weights, exact: weights cut into limbs narrow enough that every
    float64 sum stays below 2^53. Returns words (D_in, O, W)."""
    ones = torch.ones(w_words.shape[:-1], dtype=torch.float64)
    spread = float(_first_transpose(enc, torch.from_numpy(g_abs_bound), ones).max())
    bits = ring._limb_bits(spread)
    gl = torch.from_numpy(g)
    parts = np.stack([_first_transpose(enc, gl, torch.from_numpy(limb)).numpy()
                      for limb in ring.limbs(w_words, bits)])          # (L, O, D_in)
    return ring.combine_limbs(parts, bits, w_words.shape[-1]).transpose(1, 0, 2)


def prepare(enc: EncryptedModel) -> Prepared:
    """Build (once) the Z_Q operator of the whole encrypted model; cached on the object."""
    if enc._prepared is not None:
        return enc._prepared
    if not enc.is_linear:
        raise HEError("the collapsed operator exists only for linear networks; this one has a "
                      f"{enc.tail.layers[enc.split].kind} layer (use encrypted_infer_layered)")
    params = enc.params
    g = _tail_transpose(enc, absolute=False)
    g_abs = _tail_transpose(enc, absolute=True)
    if g_abs.max(initial=0) >= FLOAT_EXACT:
        raise HEError("integer tail too large for exact evaluation; lower p")
    out_ch = enc.first_shape[0]
    o = g.shape[0]
    g_int = np.round(g).astype(np.int64)
    wq = enc.first_weight.words
    bq = enc.first_bias.words
    g_sum = g_int.reshape(o, out_ch, -1).sum(-1)                        # (O, out_ch): bias fan-out
    tail_bias = ring.to_words(ring.lift(_tail_const(enc).astype(object) * params.w, params.words),
                              params.words)                          # trivial encryption (w y, 0)
    if enc.strategy == "element-wise":
        comps = params.k + 1
        cols, biases = [], []
        for j in range(comps):
            cols.append(_exact_first_transpose(enc, g, g_abs, wq[..., j, :]))
            biases.append(ring.int_matmul(g_sum, bq[:, j, None, :])[:, 0])  # (O, W)
        k_words = np.stack(cols, axis=2)                                 # (D_in, O, comps, W)
        bias_words = np.stack(biases, axis=1)                            # (O, comps, W)
        bias_words[:, 0] = ring.add_words(bias_words[:, 0], tail_bias)
        k_words = k_words.reshape(k_words.shape[0], o * comps, -1)
        bias_words = bias_words.reshape(o * comps, -1)
    else:
        conv_w = np.moveaxis(wq, -2, 0)                                  # (out+k, in, kh, kw, W)
        ident = _exact_first_transpose(enc, g, g_abs, conv_w[:out_ch])   # (D_in, O, W)
        b_ident = ring.add_words(ring.int_matmul(g_sum, bq[:out_ch, None, :])[:, 0], tail_bias)
        # residual channels: the first layer's own operator for each extra output channel
        out_shape = _first_out_shape(enc)
        hw = int(np.prod(out_shape[1:])) if len(out_shape) > 1 else 1
        eye = np.eye(hw).reshape(hw, 1, *out_shape[1:])
        eye_abs = np.ones((1, 1, *out_shape[1:]))
        res = [_exact_first_transpose(enc, eye, eye_abs, conv_w[out_ch + t:out_ch + t + 1])
               for t in range(params.k)]                                 # each (D_in, hw, W)
        k_words = np.concatenate([ident] + res, axis=1)
        b_res = [np.broadcast_to(bq[out_ch + t], (hw, params.words)) for t in range(params.k)]
        bias_words = np.concatenate([b_ident] + b_res, axis=0)
    ones = torch.ones(enc.first_shape, dtype=torch.float64)
    noise_op = _first_transpose(enc, torch.from_numpy(g_abs), ones).numpy().T
    noise_const = np.abs(g_abs.reshape(o, out_ch, -1)).sum((1, 2))
    tail_abs_bias = np.abs(_tail_const_abs(enc))
    enc._prepared = Prepared(k_words, bias_words, noise_op, noise_const,
                             noise_op * enc.weight_bound, noise_const * enc.weight_bound + tail_abs_bias,
                             g_int)
    return enc._prepared


def _tail_const_abs(enc: EncryptedModel) -> np.ndarray:
    h = torch.zeros(1, *_first_out_shape(enc), dtype=torch.float64)
    for layer in enc.tail.layers:
        h = apply_layer(layer, h, absolute=True)
    return h[0].numpy()


def _bounds(prep: Prepared, x_abs: np.ndarray, fresh: int) -> tuple[int, int]:
    """Worst-case (noise, value) over the batch as Python ints: max_rows (|x| @ op + const),
    computed in float64 and rounded up with a relative margin far above float64 rounding error."""
    both = x_abs @ np.concatenate([prep.noise_op, prep.value_op], axis=1)
    o = prep.noise_op.shape[1]
    noise = float((both[:, :o] + prep.noise_const).max(initial=0.0))
    value = float((both[:, o:] + prep.value_const).max(initial=0.0))
    return _round_up(noise) * fresh, _round_up(value)


def _round_up(v: float) -> int:
    """A float64 bound as an int, rounded up with a relative margin far above float64 rounding error."""
    return math.ceil(v * (1 + 2.0 ** -40)) + 1


@dataclass
class PairOutputs:
    """Matrix-pair-wise inference result: identity part (N, O) plus k residual maps (N, k*hw)."""

    words: np.ndarray
    outputs: int
    noise_bound: int
    value_bound: int
    key_id: str


def encrypted_infer(enc: EncryptedModel, x: np.ndarray, q: int | None = None,
                    method: str = "auto") -> Ciphertext | PairOutputs:
    """Verifier path: encrypted model on plaintext integer inputs x (N, *input_shape) = round(q*images).

    Element-wise returns a Ciphertext batch (N, outputs) with n=1; matrix-pair-wise a PairOutputs.
    For a network with a nonlinearity, the ciphertext of the linear prefix (see the module doc).
    method: "collapsed" (one Z_Q operator, linear networks only), "layered" (layer by layer), or
    "auto" (collapsed when the network is linear). Raises NoiseOverflowError if the worst-case
    noise of *this* computation could break decryption."""
    if method not in ("auto", "collapsed", "layered"):
        raise HEError(f"unknown inference method {method!r}; use auto, collapsed or layered")
    if method == "layered" or (method == "auto" and not enc.is_linear):
        return encrypted_infer_layered(enc, x, q)
    xf, noise, value = _admit(enc, x, q)
    prep = prepare(enc)
    params = enc.params
    y = ring.add_words(ring.limb_matmul(xf, prep.k_words), prep.bias_words[None])
    o = prep.tail_g.shape[0]
    if enc.strategy == "element-wise":
        y = y.reshape(len(x), o, params.k + 1, params.words)
        return Ciphertext(params, 1, y, noise, value, enc.key_id)
    return PairOutputs(y, o, noise, value, enc.key_id)


def _check_inputs(enc: EncryptedModel, x: np.ndarray, q: int | None) -> np.ndarray:
    if q is not None and q != enc.q:
        raise HEError(f"inputs scaled with q={q}, but the model's biases were scaled for q={enc.q}")
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise HEError("encrypted_infer takes integer inputs: use scale_inputs(images, q)")
    if tuple(x.shape[1:]) != enc.input_shape:
        raise HEError(f"inputs have shape {x.shape[1:]}, the model expects {enc.input_shape}")
    return x


def _admit(enc: EncryptedModel, x: np.ndarray, q: int | None) -> tuple[np.ndarray, int, int]:
    """Validate inputs; return them flat as float64 with this computation's worst-case bounds."""
    x = _check_inputs(enc, x, q)
    params = enc.params
    xf = x.reshape(len(x), -1).astype(np.float64)
    x_abs = xf if x.min(initial=0) >= 0 else np.abs(xf)
    if enc.is_linear:
        noise, value = _bounds(prepare(enc), x_abs, params.fresh_noise)
    else:
        noise, value = _prefix_bounds(enc, x_abs, params.fresh_noise)
    probe = Ciphertext(params, 1, np.zeros((1, 1 + params.k, params.words), np.uint64), noise, value,
                       enc.key_id)
    probe.check_budget()
    return xf, noise, value


def _prefix_bounds(enc: EncryptedModel, x_abs: np.ndarray, fresh: int) -> tuple[int, int]:
    """Worst-case (noise, value) of the linear prefix's outputs, by an absolute-value pass:
    every first-layer weight ciphertext has noise <= fresh and plaintext <= weight_bound."""
    prefix = enc.tail.layers[:enc.split]
    layer = enc.first_layer
    mixes = any(lay.kind in ("conv", "linear") for lay in prefix)
    shape = (enc.first_shape[0] if mixes else 1, *enc.first_shape[1:])   # all channels equal otherwise
    h = torch.from_numpy(x_abs).reshape(len(x_abs), *enc.input_shape)
    if layer.kind == "linear":
        h = h.flatten(1)
    h = apply_layer(IntLayer(layer.kind, None, None, layer.stride, layer.padding), h,
                    torch.ones(shape, dtype=torch.float64), bias=False) + 1.0      # + the bias ciphertext
    hn, hv = h, h * enc.weight_bound
    for lay in prefix:
        hn = apply_layer(lay, hn, bias=False, absolute=True)   # tail biases are trivial encryptions: no noise
        hv = apply_layer(lay, hv, absolute=True)
    return _round_up(float(hn.max())) * fresh, _round_up(float(hv.max()))


def _first_operands(enc: EncryptedModel) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """The first layer's Z_Q weights as (K, Cout', W) columns, component-major, its bias (Cout', W),
    and (comps, identity channels, extra key channels)."""
    params = enc.params
    w = enc.first_weight.words
    b = enc.first_bias.words
    out_ch = enc.first_shape[0]
    if enc.strategy == "element-wise":
        comps = params.k + 1
        k_words = np.moveaxis(w, 0, -2).reshape(-1, comps * out_ch, params.words)
        bias = b.transpose(1, 0, 2).reshape(comps * out_ch, params.words)
        return k_words, bias, comps, out_ch, 0
    return w.reshape(-1, out_ch + params.k, params.words), b, 1, out_ch, params.k


def _prefix_shape(enc: EncryptedModel) -> tuple[int, ...]:
    """Torch shape (per example) of the linear prefix's output."""
    h = torch.zeros(1, *_first_out_shape(enc), dtype=torch.float64)
    for layer in enc.tail.layers[:enc.split]:
        h = apply_layer(layer, h, bias=False)
    return tuple(h.shape[1:])


def encrypted_infer_layered(enc: EncryptedModel, x: np.ndarray, q: int | None = None,
                            chunk: int | None = None, int8: bool = True,
                            merge_pools: bool = True) -> Ciphertext | PairOutputs:
    """Layer-by-layer inference (the paper's Fig. 5/6 flow), every layer one exact GEMM over all
    ciphertext components (coopml.he.layered): float64 limbs, and int8 byte digits for the layers
    after the first when their weights fit int8 (`int8=False`: float64 throughout). Same words as
    `encrypted_infer`. `merge_pools`: the first layer and the sum pools right after it as one
    strided convolution (`coopml.he.layered.merge_pools_into_kernel`; False: conv, then pools)."""
    x = _check_inputs(enc, x, q)
    _, noise, value = _admit(enc, x, q)
    params = enc.params
    k_words, bias, comps, channels, extra = _first_operands(enc)
    kernel = (enc.first_shape[2], enc.first_shape[3]) if enc.first_layer.kind == "conv" else (1, 1)
    out = layered.run(k_words, bias, enc.first_layer, kernel, enc.input_shape, enc.tail.layers[:enc.split],
                      x, params.w, comps, channels, extra, chunk, int8=int8, merge_pools=merge_pools)
    n = len(x)
    ident = out.ident                                     # (comps, N, ..., W)
    if not out.flat:                                      # NHWC -> torch's (C, H, W) order
        ident = np.moveaxis(ident, -2, 2)
    if enc.is_linear and enc.strategy == "matrix-pair-wise" and out.resid is not None:
        words = np.concatenate([ident[0].reshape(n, -1, params.words),
                                out.resid.reshape(n, -1, params.words)], axis=1)
        return PairOutputs(words, ident.shape[2], noise, value, enc.key_id)
    if enc.strategy == "element-wise":
        flat = ident.reshape(comps, n, -1, params.words)
        return Ciphertext(params, 1, np.moveaxis(flat, 0, 2), noise, value, enc.key_id)
    # matrix-pair-wise prefix: one ciphertext of the channel vector per position (key [I, T])
    per_pos = ident[0].reshape(n, channels + extra, -1, params.words)      # (N, C+k, positions, W)
    return Ciphertext(params, channels, np.moveaxis(per_pos, 2, 1), noise, value, enc.key_id)


def decrypt_outputs(sk: SecretKey, enc: EncryptedModel, out: Ciphertext | PairOutputs) -> np.ndarray:
    """Initiator side: integer outputs (N, O); divide by enc.output_scale for logits. For networks
    with a nonlinearity: decrypt the prefix and finish the network on plaintext integers."""
    if not enc.is_linear and not isinstance(out, Ciphertext):
        raise HEError("expected the ciphertext of the encrypted prefix")
    if isinstance(out, Ciphertext):
        return finish_outputs(enc, decrypt(sk, out))
    if out.key_id != sk.key_id:
        raise KeyMismatchError(f"outputs belong to key {out.key_id}, secret key is {sk.key_id}")
    params = sk.params
    Ciphertext(params, 1, np.zeros((1, 1 + params.k, params.words), np.uint64), out.noise_bound,
               out.value_bound, sk.key_id).check_budget()
    prep = prepare(enc)
    o = out.outputs
    out_ch = enc.first_shape[0]
    g = prep.tail_g.reshape(o, out_ch, -1)                                  # (O, out_ch, hw)
    gt = np.einsum("ct,och->oth", sk.t.astype(np.int64), g).reshape(o, -1)  # key of the residual part
    ident = out.words[:, :o]
    resid = out.words[:, o:]                                                # (N, k*hw, W)
    mixed = ring.int_matmul(gt, resid.transpose(1, 0, 2))                  # (O, N, W)
    v = ring.signed(ring.to_ring(ring.add_words(ident, mixed.transpose(1, 0, 2))), params.words)
    res = (v + params.w // 2) // params.w
    return np.asarray(res).astype(np.int64)


def finish_outputs(enc: EncryptedModel, plain: np.ndarray) -> np.ndarray:
    """The part of `decrypt_outputs` that needs no key: from the decrypted words of an encrypted
    inference (`decrypt(sk, ciphertext)`) to the network's integer outputs (N, O), finishing a
    nonlinear network on plaintext integers. Lets the key holder decrypt without ever receiving
    the encrypted model (whose first layer its key would open)."""
    plain = np.asarray(plain)
    if enc.is_linear:
        if enc.strategy != "element-wise":
            raise HEError("matrix-pair-wise outputs of a linear network decrypt with decrypt_outputs")
        return plain[..., 0]
    shape = _prefix_shape(enc)
    n = len(plain)
    if enc.strategy == "element-wise":
        h = plain[..., 0].reshape(n, *shape)
    else:                                             # (N, positions, C) -> (N, C, ...)
        h = np.moveaxis(plain.reshape(n, -1, shape[0]), 2, 1).reshape(n, *shape)
    return forward_layers(enc.tail.layers[enc.split:], h)


def decrypt_model(sk: SecretKey, enc: EncryptedModel, template: nn.Module) -> nn.Module:
    """Initiator side: the model with integer-rounded weights / p (biases / their scale).

    `template` is a module of the same architecture (e.g. build_model(enc.arch))."""
    if enc.key_id != sk.key_id:
        raise KeyMismatchError(f"model was encrypted for key {enc.key_id}, secret key is {sk.key_id}")
    w = decrypt(sk, enc.first_weight)
    b = decrypt(sk, enc.first_bias)
    if enc.strategy == "element-wise":
        w, b = w[..., 0], b[..., 0]
    else:
        w = np.moveaxis(w, -1, 0)
    first = IntLayer(enc.first_layer.kind, w.astype(np.int64), b.astype(np.int64),
                     enc.first_layer.stride, enc.first_layer.padding)
    net = IntegerNet([IntLayer("flatten")] * enc.lead + [first] + enc.tail.layers, enc.p, enc.q,
                     enc.tail.scales)
    return dequantize(net, template)


def plain_integer_net(model: nn.Module, p: int, q: int) -> IntegerNet:
    """The integer-scaled plaintext network encrypted inference must reproduce."""
    return quantize(model, p, q)


__all__ = [
    "STRATEGIES",
    "EncryptedModel",
    "NoiseOverflowError",
    "PairOutputs",
    "decrypt_model",
    "decrypt_outputs",
    "encrypt_model",
    "encrypted_infer",
    "encrypted_infer_layered",
    "plain_integer_net",
    "prepare",
]
