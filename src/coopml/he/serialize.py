"""Keys, ciphertexts and encrypted models as self-describing safetensors blobs (no pickle).

Arrays are uint64 words / int64; everything else (kind, parameters, key id, bounds, model
layout) is JSON in the safetensors header metadata under "coopml-he". Loading re-validates
parameters, shapes, the key id and, for models, the architecture's layer structure.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from coopml.errors import HEError
from coopml.he.model import EncryptedModel
from coopml.he.scaling import IntegerNet, IntLayer, pair, quantize
from coopml.he.scheme import Ciphertext, Params, PublicKey, SecretKey

FORMAT = "coopml-he/1"


class HEFormatError(HEError):
    """A key/ciphertext/model blob is malformed, of the wrong kind, or inconsistent."""


def _ct_meta(ct: Ciphertext) -> dict[str, Any]:
    return {"n": ct.n, "key_id": ct.key_id, "noise_bound": str(ct.noise_bound),
            "value_bound": str(ct.value_bound)}


def to_bytes(obj: PublicKey | SecretKey | Ciphertext | EncryptedModel) -> bytes:
    if isinstance(obj, PublicKey):
        kind, tensors, meta = "public-key", {"m": obj.m_words}, {"n": obj.n, "key_id": obj.key_id}
    elif isinstance(obj, SecretKey):
        kind, tensors, meta = "secret-key", {"t": obj.t.astype(np.int64)}, {"n": obj.n, "key_id": obj.key_id}
    elif isinstance(obj, Ciphertext):
        kind, tensors, meta = "ciphertext", {"c": obj.words}, _ct_meta(obj)
    elif isinstance(obj, EncryptedModel):
        kind = "encrypted-model"
        tensors = {"first_weight": obj.first_weight.words, "first_bias": obj.first_bias.words}
        layers = []
        for i, layer in enumerate(obj.tail.layers):
            layers.append({"kind": layer.kind, "stride": layer.stride, "padding": layer.padding,
                           "size": layer.size, "poly": [str(a) for a in layer.poly]})
            if layer.weight is not None:
                weight, bias = layer.params()
                tensors[f"tail.{i}.weight"] = weight.astype(np.int64)
                tensors[f"tail.{i}.bias"] = bias.astype(np.int64)
        fl = obj.first_layer
        meta = {"arch": obj.arch, "strategy": obj.strategy, "p": obj.p, "q": obj.q,
                "input_shape": list(obj.input_shape), "first_shape": list(obj.first_shape),
                "first_layer": {"kind": fl.kind, "stride": fl.stride, "padding": fl.padding},
                "tail": layers, "scales": [str(s) for s in obj.tail.scales],
                "weight_bound": obj.weight_bound, "lead": obj.lead,
                "first_weight": _ct_meta(obj.first_weight), "first_bias": _ct_meta(obj.first_bias)}
    else:
        raise HEError(f"cannot serialise {type(obj).__name__}")
    params = (obj.first_weight.params if isinstance(obj, EncryptedModel) else obj.params).to_dict()
    header = {"format": FORMAT, "kind": kind, "params": params, **meta}
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return st_save(tensors, metadata={"coopml-he": json.dumps(header)})


def _parse(data: bytes, where: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not isinstance(data, (bytes, bytearray)) or len(data) < 8:
        raise HEFormatError(f"{where}: not a coopml-he blob (too short)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise HEFormatError(f"{where}: not a safetensors blob (header length {n} exceeds data)")
    try:
        header = json.loads(bytes(data[8:8 + n]))
        meta = json.loads(header["__metadata__"]["coopml-he"])
        tensors = st_load(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, SafetensorError) as exc:
        raise HEFormatError(f"{where}: not a coopml-he blob ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise HEFormatError(f"{where}: unsupported format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta, tensors


def _tensor(tensors: dict[str, np.ndarray], name: str, dtype: type, where: str) -> np.ndarray:
    if name not in tensors:
        raise HEFormatError(f"{where}: missing array {name!r}")
    arr = tensors[name]
    if arr.dtype != dtype:
        raise HEFormatError(f"{where}: array {name!r} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    return arr


def _ct(meta: dict[str, Any], words: np.ndarray, params: Params, where: str) -> Ciphertext:
    try:
        return Ciphertext(params, int(meta["n"]), words, int(meta["noise_bound"]), int(meta["value_bound"]),
                          str(meta["key_id"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise HEFormatError(f"{where}: bad ciphertext metadata ({exc})") from None


def from_bytes(data: bytes, expect: str | None = None, where: str = "<bytes>"
               ) -> PublicKey | SecretKey | Ciphertext | EncryptedModel:
    """Load a blob; `expect` ("public-key", "secret-key", "ciphertext", "encrypted-model") checks its kind."""
    meta, tensors = _parse(data, where)
    kind = meta.get("kind")
    if expect is not None and kind != expect:
        raise HEFormatError(f"{where}: expected a {expect}, got a {kind}")
    try:
        params = Params(**{k: int(v) for k, v in meta["params"].items()})
    except (KeyError, TypeError, ValueError, AttributeError, HEError) as exc:
        raise HEFormatError(f"{where}: bad params ({exc})") from None
    try:
        if kind == "public-key":
            pk = PublicKey(params, int(meta["n"]), _tensor(tensors, "m", np.uint64, where))
            if pk.key_id != meta.get("key_id"):
                raise HEFormatError(f"{where}: public key does not match its recorded key id (tampered?)")
            return pk
        if kind == "secret-key":
            return SecretKey(params, int(meta["n"]), _tensor(tensors, "t", np.int64, where), str(meta["key_id"]))
        if kind == "ciphertext":
            return _ct(meta, _tensor(tensors, "c", np.uint64, where), params, where)
        if kind == "encrypted-model":
            return _model(meta, tensors, params, where)
    except HEFormatError:
        raise
    except HEError as exc:
        raise HEFormatError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise HEFormatError(f"{where}: bad {kind} metadata ({type(exc).__name__}: {exc})") from None
    raise HEFormatError(f"{where}: unknown kind {kind!r}")


def _model(meta: dict[str, Any], tensors: dict[str, np.ndarray], params: Params, where: str) -> EncryptedModel:
    fw = _ct(meta["first_weight"], _tensor(tensors, "first_weight", np.uint64, where), params, where)
    fb = _ct(meta["first_bias"], _tensor(tensors, "first_bias", np.uint64, where), params, where)
    if fw.key_id != fb.key_id:
        raise HEFormatError(f"{where}: first-layer weight and bias are under different keys")
    layers = []
    for i, spec in enumerate(meta["tail"]):
        w = tensors.get(f"tail.{i}.weight")
        b = tensors.get(f"tail.{i}.bias")
        if spec["kind"] in ("conv", "linear") and (w is None or b is None):
            raise HEFormatError(f"{where}: tail layer {i} ({spec['kind']}) has no weights")
        layers.append(IntLayer(spec["kind"], w, b, _pair(spec["stride"]), _pair(spec["padding"]), _pair(spec["size"]),
                               tuple(int(a) for a in spec.get("poly", []))))
    fl = meta["first_layer"]
    enc = EncryptedModel(str(meta["arch"]), str(meta["strategy"]), int(meta["p"]), int(meta["q"]),
                         tuple(int(v) for v in meta["input_shape"]), fw, fb,
                         IntLayer(fl["kind"], None, None, _pair(fl["stride"]), _pair(fl["padding"])),
                         tuple(int(v) for v in meta["first_shape"]),
                         IntegerNet(layers, int(meta["p"]), int(meta["q"]), [int(s) for s in meta["scales"]]),
                         int(meta["weight_bound"]), int(meta.get("lead", 0)))
    check_model(enc, where)
    return enc


def _pair(v: Any) -> int | tuple[int, int]:
    """A stride/padding/pool size as written: an int, or [h, w] for rectangular ones."""
    if isinstance(v, list):
        if len(v) != 2:
            raise HEFormatError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v)


def check_model(enc: EncryptedModel, where: str = "<model>") -> None:
    """Consistency of an encrypted model with its declared architecture, strategy and scales."""
    from coopml.models import ARCHITECTURES, build_model  # known architectures only
    if enc.strategy not in ("element-wise", "matrix-pair-wise"):
        raise HEFormatError(f"{where}: unknown strategy {enc.strategy!r}")
    out_ch = enc.first_shape[0]
    want_b: tuple[int, ...]
    if enc.strategy == "element-wise":
        want_w, want_b, n = enc.first_shape, (out_ch,), 1
    else:
        want_w, want_b, n = tuple(enc.first_shape[1:]), (), out_ch
    if enc.first_weight.shape != want_w or enc.first_weight.n != n:
        raise HEFormatError(f"{where}: encrypted first-layer weights have batch {enc.first_weight.shape} "
                            f"(n={enc.first_weight.n}), expected {want_w} (n={n}) for {enc.strategy}")
    if enc.first_bias.shape != want_b or enc.first_bias.n != n:
        raise HEFormatError(f"{where}: encrypted first-layer bias has batch {enc.first_bias.shape}, expected {want_b}")
    if enc.arch in ARCHITECTURES:
        ref = quantize(build_model(enc.arch), enc.p, enc.q)
        kinds = [(l.kind, None if l.weight is None else l.weight.shape, pair(l.size), pair(l.stride),
                  pair(l.padding), l.poly) for l in ref.layers]
        got = [(l.kind, None if l.weight is None else l.weight.shape, pair(l.size), pair(l.stride),
                pair(l.padding), l.poly) for l in enc.tail.layers]
        first = ref.layers[enc.lead] if enc.lead < len(ref.layers) else None
        if kinds[enc.lead + 1:] != got or first is None or first.weight is None \
                or tuple(first.weight.shape) != enc.first_shape:
            raise HEFormatError(f"{where}: layers do not match architecture {enc.arch!r}")
        if ref.scales != enc.tail.scales:
            raise HEFormatError(f"{where}: recorded scales {enc.tail.scales} do not follow from p={enc.p}, q={enc.q}")
    for i, layer in enumerate(enc.tail.layers):
        if layer.weight is not None and any(a.dtype != np.int64 for a in layer.params()):
            raise HEFormatError(f"{where}: tail layer {i} weights must be int64")
