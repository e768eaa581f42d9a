"""UnixFS files as dag-pb/raw blocks, byte-for-byte what `ipfs add` builds, and a verifying reader.

Why hand-written protobuf: no maintained Python package encodes dag-pb/UnixFS nodes, and a block
store needs the blocks themselves (aleph-cid only yields root CIDs). CIDs, multihashes and
multibases come from `multiformats`; the tests pin the result against aleph-cid and a live daemon.

Layout (kubo/js-ipfs defaults): fixed-size chunks (256 KiB), balanced tree of at most 174 links
per node, CIDv0 with dag-pb leaves, or CIDv1 (base32) with raw leaves.

The reader needs no options: every block is checked against the CID that names it, and the tree
is rebuilt from the links, so any chunker, layout, CID version or leaf kind verifies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from multiformats import CID, multihash

from coopml.errors import ContentMismatch, ContentTooLarge

DEFAULT_CHUNK_SIZE = 256 * 1024
MAX_LINKS = 174
MAX_CHUNK_SIZE = 1024 * 1024  # kubo refuses larger chunkers: blocks must cross bitswap
MAX_BLOCK_SIZE = 2 * 1024 * 1024  # a block larger than this is refused before hashing
MAX_DEPTH = 32

_UNIXFS_RAW, _UNIXFS_FILE = 0, 2


# --- protobuf wire format (only what dag-pb and UnixFS use) ---------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field_no: int, wire: int) -> bytes:
    return _varint(field_no << 3 | wire)


def _len_field(field_no: int, payload: bytes) -> bytes:
    return _key(field_no, 2) + _varint(len(payload)) + payload


def _int_field(field_no: int, value: int) -> bytes:
    return _key(field_no, 0) + _varint(value)


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Yield (field number, int or bytes); raise ValueError on anything malformed."""
    pos, end = 0, len(buf)

    def read_varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise ValueError("truncated or overlong varint")
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    while pos < end:
        key = read_varint()
        field_no, wire = key >> 3, key & 7
        if wire == 0:
            yield field_no, read_varint()
        elif wire == 2:
            length = read_varint()
            if pos + length > end:
                raise ValueError("length-delimited field runs past the end")
            yield field_no, buf[pos:pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


# --- dag-pb / UnixFS nodes ---------------------------------------------------------------------

@dataclass(frozen=True)
class Link:
    cid: CID
    tsize: int  # bytes of the whole sub-DAG (encoded blocks), as kubo records it


@dataclass(frozen=True)
class FileNode:
    """A decoded dag-pb node carrying UnixFS file data."""

    data: bytes
    filesize: int | None
    blocksizes: list[int] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)


def encode_file_node(data: bytes, filesize: int, blocksizes: list[int], links: list[Link]) -> bytes:
    unixfs = _int_field(1, _UNIXFS_FILE)
    if data:
        unixfs += _len_field(2, data)
    unixfs += _int_field(3, filesize) + b"".join(_int_field(4, s) for s in blocksizes)
    # dag-pb canonical form: Links (field 2) before Data (field 1); links carry an empty Name.
    encoded_links = b"".join(
        _len_field(2, _len_field(1, bytes(link.cid)) + _len_field(2, b"") + _int_field(3, link.tsize))
        for link in links
    )
    return encoded_links + _len_field(1, unixfs)


def decode_file_node(block: bytes) -> FileNode:
    """Decode a dag-pb block that must hold a UnixFS file (or raw) node; ValueError otherwise."""
    links: list[Link] = []
    unixfs: bytes | None = None
    for no, value in _fields(block):
        if no == 2 and isinstance(value, bytes):
            cid, tsize = None, 0
            for lno, lvalue in _fields(value):
                if lno == 1 and isinstance(lvalue, bytes):
                    cid = CID.decode(lvalue)
                elif lno == 3 and isinstance(lvalue, int):
                    tsize = lvalue
            if cid is None:
                raise ValueError("dag-pb link without a hash")
            links.append(Link(cid, tsize))
        elif no == 1 and isinstance(value, bytes):
            unixfs = value
        else:
            raise ValueError(f"unexpected dag-pb field {no}")
    if unixfs is None:
        raise ValueError("dag-pb node without UnixFS data")
    kind, data, filesize, blocksizes = None, b"", None, []
    for no, value in _fields(unixfs):
        if no == 1 and isinstance(value, int):
            kind = value
        elif no == 2 and isinstance(value, bytes):
            data = value
        elif no == 3 and isinstance(value, int):
            filesize = value
        elif no == 4 and isinstance(value, int):
            blocksizes.append(value)
    if kind not in (_UNIXFS_RAW, _UNIXFS_FILE):
        raise ValueError(f"UnixFS node of type {kind} is not a file")
    return FileNode(data, filesize, blocksizes, links)


# --- building a file DAG -----------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    cid: CID
    data: bytes


@dataclass(frozen=True)
class _Child:
    cid: CID
    tsize: int
    filesize: int


def make_cid(block: bytes, *, version: int, codec: str) -> CID:
    digest = multihash.digest(block, "sha2-256")
    return CID("base58btc" if version == 0 else "base32", version, codec, digest)


def chunk_bytes(data: bytes | memoryview, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
    """Fixed-size chunks; an empty input is one empty chunk (the empty file has one leaf)."""
    view = memoryview(data)
    if len(view) == 0:
        yield b""
    for start in range(0, len(view), chunk_size):
        yield bytes(view[start:start + chunk_size])


def build_file(chunks: Iterable[bytes], *, cid_version: int = 0, raw_leaves: bool | None = None) -> Iterator[Block]:
    """Yield the blocks of a balanced UnixFS file, children before parents; the last is the root.

    `raw_leaves` defaults to kubo's choice: True with CIDv1, False with CIDv0 (v0 cannot name raw).
    """
    if cid_version not in (0, 1):
        raise ValueError("cid_version must be 0 or 1")
    raw = (cid_version == 1) if raw_leaves is None else raw_leaves
    if raw and cid_version == 0:
        raise ValueError("raw leaves need CIDv1")
    levels: list[list[_Child]] = [[]]

    def parent_of(children: list[_Child]) -> tuple[Block, _Child]:
        sizes = [c.filesize for c in children]
        node = encode_file_node(b"", sum(sizes), sizes, [Link(c.cid, c.tsize) for c in children])
        cid = make_cid(node, version=cid_version, codec="dag-pb")
        return Block(cid, node), _Child(cid, len(node) + sum(c.tsize for c in children), sum(sizes))

    for chunk in chunks:
        if raw:
            block = Block(make_cid(chunk, version=1, codec="raw"), chunk)
        else:
            node = encode_file_node(chunk, len(chunk), [], [])
            block = Block(make_cid(node, version=cid_version, codec="dag-pb"), node)
        yield block
        levels[0].append(_Child(block.cid, len(block.data), len(chunk)))
        depth = 0
        while len(levels[depth]) == MAX_LINKS:  # a full node: close it and climb
            parent, child = parent_of(levels[depth])
            yield parent
            levels[depth] = []
            if depth + 1 == len(levels):
                levels.append([])
            levels[depth + 1].append(child)
            depth += 1

    if not levels[0] and len(levels) == 1:
        raise ValueError("build_file needs at least one chunk")
    depth = 0
    while True:
        top = all(not level for level in levels[depth + 1:])
        if top and len(levels[depth]) == 1:
            return  # the single node at the top level is the root, already yielded
        if levels[depth]:
            parent, child = parent_of(levels[depth])
            yield parent
            if depth + 1 == len(levels):
                levels.append([])
            levels[depth + 1].append(child)
        depth += 1


def file_cid(data: bytes, *, cid_version: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE) -> str:
    """The CID `ipfs add [--cid-version=1]` gives `data` (v1 in base32, raw leaves)."""
    root = None
    for root in build_file(chunk_bytes(data, chunk_size), cid_version=cid_version):
        pass
    assert root is not None
    return str(root.cid)


# --- reading a file DAG back, verifying every block -------------------------------------------

def parse_cid(cid: str | CID) -> CID:
    try:
        return cid if isinstance(cid, CID) else CID.decode(cid)
    except Exception as exc:  # multiformats raises several types
        raise ContentMismatch(f"not a valid CID: {cid!r} ({exc})") from exc


def verify_block(cid: CID, block: bytes) -> None:
    """Raise ContentMismatch unless `block` hashes to the multihash inside `cid`."""
    if len(block) > MAX_BLOCK_SIZE:
        raise ContentMismatch(f"block {cid} is {len(block)} bytes, over the {MAX_BLOCK_SIZE}-byte block limit")
    try:
        ok = multihash.digest(block, cid.hashfun.name) == cid.digest
    except Exception as exc:
        raise ContentMismatch(f"cannot verify {cid}: unsupported hash {cid.hashfun.name}") from exc
    if not ok:
        raise ContentMismatch(f"block received for {cid} does not match its hash: tampered or corrupted")


FETCH_WINDOW = 16  # sibling blocks requested together: hides per-block latency, bounds memory


def read_file(root: str | CID, get_block: Callable[[CID], bytes], *, max_size: int,
              get_blocks: Callable[[list[CID]], list[bytes]] | None = None) -> bytes:
    """Rebuild a UnixFS file from its root CID, fetching blocks with `get_block`.

    Every block is verified against its CID before it is decoded, sizes recorded in the tree must
    agree with the data found, and nothing beyond `max_size` bytes is assembled. `get_blocks`, if
    given, fetches up to FETCH_WINDOW siblings at once (in order), e.g. concurrently over a network.
    """
    out = bytearray()

    def walk(cid: CID, depth: int, block: bytes | None = None) -> int:
        if depth > MAX_DEPTH:
            raise ContentMismatch(f"DAG under {root} is deeper than {MAX_DEPTH} levels")
        if block is None:
            block = get_block(cid)
        verify_block(cid, block)
        if cid.codec.name == "raw":
            if len(out) + len(block) > max_size:
                raise ContentTooLarge(f"{root} is larger than the limit of {max_size} bytes")
            out.extend(block)
            return len(block)
        if cid.codec.name != "dag-pb":
            raise ContentMismatch(f"{cid} has codec {cid.codec.name}; only UnixFS files (dag-pb, raw) are stored")
        try:
            node = decode_file_node(block)
        except ValueError as exc:
            raise ContentMismatch(f"block {cid} is not a UnixFS file node: {exc}") from exc
        if node.filesize is not None and len(out) + node.filesize > max_size:
            raise ContentTooLarge(f"{root} declares {node.filesize} bytes, over the limit of {max_size}")
        if len(out) + len(node.data) > max_size:
            raise ContentTooLarge(f"{root} is larger than the limit of {max_size} bytes")
        out.extend(node.data)
        total = len(node.data)
        if node.blocksizes and len(node.blocksizes) != len(node.links):
            raise ContentMismatch(f"node {cid} has {len(node.links)} links but {len(node.blocksizes)} block sizes")
        prefetched: list[bytes] = []
        for i, link in enumerate(node.links):
            if get_blocks is not None and i % FETCH_WINDOW == 0:
                prefetched = get_blocks([lk.cid for lk in node.links[i:i + FETCH_WINDOW]])
            got = walk(link.cid, depth + 1, prefetched[i % FETCH_WINDOW] if get_blocks is not None else None)
            if node.blocksizes and got != node.blocksizes[i]:
                raise ContentMismatch(f"child {link.cid} of {cid} holds {got} bytes, the parent says {node.blocksizes[i]}")
            total += got
        if node.filesize is not None and total != node.filesize:
            raise ContentMismatch(f"node {cid} holds {total} bytes but declares {node.filesize}")
        return total

    walk(parse_cid(root), 0)
    return bytes(out)


def child_cids(cid: CID, block: bytes) -> list[CID]:
    """Links of a dag-pb block (none for raw); used to walk a DAG without assembling it."""
    if cid.codec.name != "dag-pb":
        return []
    try:
        return [link.cid for link in decode_file_node(block).links]
    except ValueError as exc:
        raise ContentMismatch(f"block {cid} is not a UnixFS file node: {exc}") from exc
