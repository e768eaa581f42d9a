"""coopml.he: integer-vector homomorphic encryption (paper section IV-C), pure numpy/torch,
and a CKKS engine (SEAL inside TenSEAL) for confidential batch inference (`coopml.he.ckks`).

IVHE is obfuscation-grade with the paper's parameters (k = 1, deterministic encryption): see
docs/security.md before relying on it for confidentiality; docs/ckks.md for the CKKS engine.
"""

from coopml.he.attack import dictionary_attack, recover_secret_1d
from coopml.he.ckks import (
    CkksFormatError,
    CkksKeyMismatchError,
    CkksParams,
    EncryptedBatch,
    EncryptedOutputs,
    HePlan,
    InputRangeError,
    InsecureParametersError,
    PlanError,
    PublicContext,
    QueryKey,
    UnsupportedLayerError,
    compile_model,
    evaluate,
    params_for,
)
from coopml.he.limbs import ExactnessError
from coopml.he.model import (
    STRATEGIES,
    EncryptedModel,
    PairOutputs,
    decrypt_model,
    decrypt_outputs,
    encrypt_model,
    encrypted_infer,
    encrypted_infer_layered,
    finish_outputs,
    prepare,
)
from coopml.he.scaling import IntegerNet, dequantize, integer_forward, quantize, scale_inputs
from coopml.he.scheme import (
    Ciphertext,
    KeyMismatchError,
    LinearTransformKey,
    NoiseOverflowError,
    Params,
    PublicKey,
    SecretKey,
    add,
    add_plain,
    decrypt,
    encrypt,
    inner_product,
    keygen,
    linear_transform,
    linear_transform_key,
    matmul_plain,
)
from coopml.he.serialize import HEFormatError, check_model, from_bytes, to_bytes

# Parameters that fit the paper's Table IV CNN with p <= 2^7, q = 1000 (Case Study II):
# the worst-case output noise (~2^47) stays below w/2 and w * |y| (~2^115) below Q/2 = 2^127.
MODEL_PARAMS = Params(w=1 << 60, k=1, noise_bound=1, secret_bound=1 << 16, plain_bound=1 << 20, words=2)

__all__ = [
    "MODEL_PARAMS",
    "STRATEGIES",
    "Ciphertext",
    "CkksFormatError",
    "CkksKeyMismatchError",
    "CkksParams",
    "EncryptedBatch",
    "EncryptedModel",
    "EncryptedOutputs",
    "ExactnessError",
    "HEFormatError",
    "HePlan",
    "InputRangeError",
    "InsecureParametersError",
    "IntegerNet",
    "KeyMismatchError",
    "LinearTransformKey",
    "NoiseOverflowError",
    "PairOutputs",
    "Params",
    "PlanError",
    "PublicContext",
    "PublicKey",
    "QueryKey",
    "SecretKey",
    "UnsupportedLayerError",
    "add",
    "add_plain",
    "check_model",
    "compile_model",
    "decrypt",
    "decrypt_model",
    "decrypt_outputs",
    "dequantize",
    "dictionary_attack",
    "encrypt",
    "encrypt_model",
    "encrypted_infer",
    "encrypted_infer_layered",
    "evaluate",
    "finish_outputs",
    "from_bytes",
    "inner_product",
    "integer_forward",
    "keygen",
    "linear_transform",
    "linear_transform_key",
    "matmul_plain",
    "params_for",
    "prepare",
    "quantize",
    "recover_secret_1d",
    "scale_inputs",
    "to_bytes",
]
