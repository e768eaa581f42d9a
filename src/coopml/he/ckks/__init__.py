"""Confidential batch inference with CKKS (Microsoft SEAL inside TenSEAL 0.3.18).

The verifier keeps its own secret key and sends encrypted images plus a public context; the
contributor evaluates its own plaintext model on them and returns encrypted features and
logits that only the verifier can decrypt. See docs/ckks.md.

    plan = compile_model(model, (1, 28, 28))          # contributor
    params = params_for(plan)                          # public, sent to the verifier
    key = QueryKey.generate(params)                    # verifier
    blob = key.encrypt_images(x).to_bytes(); ctx = key.public_context()
    batch = EncryptedBatch.from_bytes(blob, ctx)       # contributor
    reply = evaluate(plan, batch).to_bytes()
    features, logits = key.decrypt_outputs(EncryptedOutputs.from_bytes(reply, key.context))
"""

from coopml.he.ckks.batch import EncryptedBatch, EncryptedOutputs, PublicContext
from coopml.he.ckks.engine import evaluate
from coopml.he.ckks.errors import (
                                   CkksFormatError,
                                   CkksKeyMismatchError,
                                   InputRangeError,
                                   InsecureParametersError,
                                   PlanError,
                                   UnsupportedLayerError,
)
from coopml.he.ckks.keys import QueryKey
from coopml.he.ckks.params import MAX_MODULUS_BITS_128, CkksParams
from coopml.he.ckks.plan import HePlan, compile_model, params_for

__all__ = [
                                   "MAX_MODULUS_BITS_128",
                                   "CkksFormatError",
                                   "CkksKeyMismatchError",
                                   "CkksParams",
                                   "EncryptedBatch",
                                   "EncryptedOutputs",
                                   "HePlan",
                                   "InputRangeError",
                                   "InsecureParametersError",
                                   "PlanError",
                                   "PublicContext",
                                   "QueryKey",
                                   "UnsupportedLayerError",
                                   "compile_model",
                                   "evaluate",
                                   "params_for",
]
