"""Check what is deployed at an address before sending it money.

An initiator once escrowed 80 ETH to an address with no code (wrong address for that chain):
the transfer succeeded and the money was gone. `verify_deployment` refuses that before any
value moves: no code -> NoContractAtAddress; code that is not the expected contract's runtime
bytecode (from the committed artifact, ignoring the compiler's CBOR metadata tail, which only
encodes source hashes) -> NotCoopMLContract; optionally the node's chain id -> WrongChain.
"""

from __future__ import annotations

from typing import Any

from eth_utils import to_checksum_address

from coopml.chain.artifacts import load_artifact
from coopml.chain.transactions import is_unavailable
from coopml.errors import (
    ChainUnavailable,
    NoContractAtAddress,
    NotCoopMLContract,
    WrongChain,
)


def strip_metadata(code: bytes) -> bytes:
    """Runtime bytecode without solc's trailing CBOR metadata (its length is the last 2 bytes)."""
    if len(code) < 2:
        return code
    length = int.from_bytes(code[-2:], "big")
    if length + 2 > len(code) or code[-length - 2] & 0xE0 != 0xA0:  # CBOR map header
        return code
    return code[: -length - 2]


def _mask_immutables(code: bytes, artifact: dict[str, Any]) -> bytes:
    """Zero the immutable slots solc lists (filled in by the constructor, so they differ per deploy)."""
    refs = artifact.get("immutableReferences") or {}
    out = bytearray(code)
    for slots in refs.values():
        for slot in slots:
            start, length = int(slot["start"]), int(slot["length"])
            out[start:start + length] = b"\0" * length
    return bytes(out)


def verify_deployment(chain: Any, address: str, expected: str = "CoopML", chain_id: int | None = None,
                      block: str | int = "latest") -> bytes:
    """Raise unless `address` holds the runtime code of artifact `expected` (on chain `chain_id`
    when given). Returns the code. `chain` is a coopml Chain (anything with a `w3`)."""
    w3 = chain.w3
    try:
        if chain_id is not None:
            actual = int(w3.eth.chain_id)
            if actual != chain_id:
                raise WrongChain(f"wrong chain: expected chain id {chain_id}, the node serves {actual}", chain_id, actual)
        code = bytes(w3.eth.get_code(to_checksum_address(address), block))
    except (WrongChain, NoContractAtAddress):
        raise
    except Exception as exc:
        if is_unavailable(exc):
            raise ChainUnavailable(f"node unreachable while checking {address}: {exc}") from exc
        raise
    if not code:
        raise NoContractAtAddress(f"no contract at {address}: eth_getCode is empty (wrong address or chain, or a "
                                  "reset dev node); refusing to send anything there")
    artifact = load_artifact(expected)
    want = bytes.fromhex(artifact["deployedBytecode"].removeprefix("0x"))
    have = _mask_immutables(code, artifact)
    if strip_metadata(have) != strip_metadata(_mask_immutables(want, artifact)):
        raise NotCoopMLContract(f"the code at {address} ({len(code)} bytes) is not {expected} "
                                f"({len(want)} bytes, artifact compiled by {artifact.get('compiler', {}).get('version', '?')}): "
                                "another contract or another version; refusing to send anything there")
    return code
