"""CIDs identical to `ipfs add`, checked against pinned values and aleph-cid; the verifying reader."""

from __future__ import annotations

import os

import aleph_cid
import pytest
from multiformats import CID
from storage_cases import SIZES, payload

from coopml.errors import ContentMismatch, ContentTooLarge
from coopml.storage.unixfs import (
    DEFAULT_CHUNK_SIZE,
    MAX_LINKS,
    Block,
    build_file,
    chunk_bytes,
    decode_file_node,
    encode_file_node,
    file_cid,
    read_file,
)

CID_SIZES = {**SIZES, "two-level": MAX_LINKS * DEFAULT_CHUNK_SIZE + 1}  # 175 leaves: one level more than 174


def blocks_of(data: bytes, cid_version: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[Block]:
    return list(build_file(chunk_bytes(data, chunk_size), cid_version=cid_version))


def test_pinned_cids_of_known_files() -> None:
    assert file_cid(b"") == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    assert file_cid(b"hello world\n") == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    assert file_cid(b"hello world\n", cid_version=1) == "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    assert file_cid(b"", cid_version=1) == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@pytest.mark.parametrize("name", list(CID_SIZES))
def test_cids_match_aleph_cid(name: str) -> None:
    data = payload(CID_SIZES[name])
    assert file_cid(data) == aleph_cid.compute_cid(data)
    hasher = aleph_cid.CidHasher.for_ipfs_v1_raw_leaves()
    hasher.update(data)
    assert file_cid(data, cid_version=1) == hasher.finalize()


def test_tree_shapes() -> None:
    """One chunk is its own root; 175 chunks need a root over two internal nodes."""
    single = blocks_of(payload(DEFAULT_CHUNK_SIZE))
    assert len(single) == 1
    many = blocks_of(payload(MAX_LINKS * 1024 + 1), chunk_size=1024)
    root = decode_file_node(many[-1].data)
    assert len(root.links) == 2 and root.filesize == MAX_LINKS * 1024 + 1
    assert root.blocksizes == [MAX_LINKS * 1024, 1]
    assert len(many) == MAX_LINKS + 1 + 2 + 1  # leaves, two internal nodes, root
    v1 = blocks_of(b"x" * 3000, cid_version=1, chunk_size=1024)
    assert [b.cid.codec.name for b in v1] == ["raw", "raw", "raw", "dag-pb"]
    assert v1[-1].cid.version == 1 and str(v1[-1].cid).startswith("bafybei")


@pytest.mark.parametrize("cid_version", [0, 1])
@pytest.mark.parametrize("size", [0, 1000, MAX_LINKS * 1024 + 5, 3 * DEFAULT_CHUNK_SIZE + 11])
def test_read_file_round_trip(cid_version: int, size: int) -> None:
    data = payload(size)
    chunk = 1024 if size == MAX_LINKS * 1024 + 5 else DEFAULT_CHUNK_SIZE
    blocks = blocks_of(data, cid_version, chunk)
    by_cid = {b.cid: b.data for b in blocks}
    assert read_file(str(blocks[-1].cid), by_cid.__getitem__, max_size=size + 1) == data


def test_tampered_leaf_is_refused() -> None:
    data = payload(3 * DEFAULT_CHUNK_SIZE)
    blocks = blocks_of(data)
    by_cid = {b.cid: b.data for b in blocks}
    leaf = blocks[1].cid
    flipped = bytearray(by_cid[leaf])
    flipped[100] ^= 1
    by_cid[leaf] = bytes(flipped)
    with pytest.raises(ContentMismatch, match="does not match its hash"):
        read_file(str(blocks[-1].cid), by_cid.__getitem__, max_size=len(data))


def test_consistent_but_lying_sizes_are_refused() -> None:
    """A well-hashed node whose declared sizes disagree with its children is malformed."""
    leaf = blocks_of(b"abc")[0]
    from coopml.storage.unixfs import Link, make_cid

    node = encode_file_node(b"", 4, [4], [Link(leaf.cid, len(leaf.data))])
    root = make_cid(node, version=0, codec="dag-pb")
    blocks = {leaf.cid: leaf.data, root: node}
    with pytest.raises(ContentMismatch, match="parent says 4"):
        read_file(str(root), blocks.__getitem__, max_size=100)


def test_garbage_block_under_its_own_cid_is_refused() -> None:
    from coopml.storage.unixfs import make_cid

    garbage = b"\x07\xff\xff"
    cid = make_cid(garbage, version=0, codec="dag-pb")
    with pytest.raises(ContentMismatch, match="not a UnixFS file node"):
        read_file(str(cid), {cid: garbage}.__getitem__, max_size=100)


def test_size_limit_stops_before_fetching_children() -> None:
    data = payload(4 * DEFAULT_CHUNK_SIZE)
    blocks = blocks_of(data)
    fetched: list[CID] = []
    by_cid = {b.cid: b.data for b in blocks}

    def get(cid: CID) -> bytes:
        fetched.append(cid)
        return by_cid[cid]

    with pytest.raises(ContentTooLarge, match="declares"):
        read_file(str(blocks[-1].cid), get, max_size=len(data) - 1)
    assert fetched == [blocks[-1].cid]


def test_invalid_cid_text_is_refused() -> None:
    with pytest.raises(ContentMismatch, match="not a valid CID"):
        read_file("not-a-cid", {}.__getitem__, max_size=10)


def test_raw_leaves_need_v1() -> None:
    with pytest.raises(ValueError):
        list(build_file([b"x"], cid_version=0, raw_leaves=True))


def test_streamed_file_chunks_equal_bytes(tmp_path: os.PathLike[str]) -> None:
    from coopml.storage.store import read_chunks

    data = payload(DEFAULT_CHUNK_SIZE * 2 + 3)
    path = os.path.join(tmp_path, "f")
    with open(path, "wb") as f:
        f.write(data)
    assert list(read_chunks(path, DEFAULT_CHUNK_SIZE, 1 << 30)) == list(chunk_bytes(data))
    open(path, "wb").close()
    assert list(read_chunks(path, DEFAULT_CHUNK_SIZE, 1 << 30)) == [b""]
