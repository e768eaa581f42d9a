"""coopml.he: integer-vector homomorphic encryption (paper section IV-C), pure numpy/torch,
and a CKKS engine (SEAL inside TenSEAL) for confidential batch inference (`coopml.he.ckks`).

IVHE is obfuscation-grade with the paper's parameters (k = 1, deterministic encryption): see
docs/security.md before relying on it for confidentiality; docs/ckks.md for the CKKS engine.
"""

from coopml.he.scheme import (Ciphertext, KeyMismatchError, LinearTransformKey, NoiseOverflowError, Params,
                              PublicKey, SecretKey, add, add_plain, decrypt, encrypt, inner_product, keygen,
                              linear_transform, linear_transform_key, matmul_plain)
from coopml.he.scaling import IntegerNet, dequantize, integer_forward, quantize, scale_inputs
from coopml.he.model import (STRATEGIES, EncryptedModel, PairOutputs, decrypt_model, decrypt_outputs,
                             encrypt_model, encrypted_infer, encrypted_infer_layered, prepare)
from coopml.he.serialize import HEFormatError, check_model, from_bytes, to_bytes
from coopml.he.attack import dictionary_attack, recover_secret_1d
from coopml.he.limbs import ExactnessError
from coopml.he.ckks import (CkksFormatError, CkksKeyMismatchError, CkksParams, EncryptedBatch, EncryptedOutputs,
                            HePlan, InputRangeError, InsecureParametersError, PlanError, PublicContext, QueryKey,
                            UnsupportedLayerError, compile_model, evaluate, params_for)

# Parameters that fit the paper's Table IV CNN with p <= 2^7, q = 1000 (Case Study II):
# the worst-case output noise (~2^47) stays below w/2 and w * |y| (~2^115) below Q/2 = 2^127.
MODEL_PARAMS = Params(w=1 << 60, k=1, noise_bound=1, secret_bound=1 << 16, plain_bound=1 << 20, words=2)

__all__ = [
    "Params", "PublicKey", "SecretKey", "Ciphertext", "LinearTransformKey", "NoiseOverflowError",
    "KeyMismatchError", "HEFormatError", "keygen", "encrypt", "decrypt", "add", "add_plain", "matmul_plain",
    "inner_product", "linear_transform_key", "linear_transform",
    "IntegerNet", "quantize", "dequantize", "integer_forward", "scale_inputs",
    "STRATEGIES", "EncryptedModel", "PairOutputs", "encrypt_model", "encrypted_infer",
    "encrypted_infer_layered", "prepare", "decrypt_outputs", "decrypt_model",
    "to_bytes", "from_bytes", "check_model", "recover_secret_1d", "dictionary_attack", "MODEL_PARAMS",
    "ExactnessError",
    # CKKS (real confidentiality; docs/ckks.md)
    "CkksParams", "HePlan", "compile_model", "params_for", "QueryKey", "PublicContext", "EncryptedBatch",
    "EncryptedOutputs", "evaluate", "CkksFormatError", "CkksKeyMismatchError", "InputRangeError",
    "InsecureParametersError", "PlanError", "UnsupportedLayerError",
]
