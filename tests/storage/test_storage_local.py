"""LocalStore: the embedded block store, including several processes sharing one root."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from storage_cases import payload

from coopml.errors import ContentMismatch, ContentNotFound, ContentTooLarge, StorageError
from coopml.storage import KuboStore, LocalStore, file_cid, open_store
from coopml.storage.unixfs import DEFAULT_CHUNK_SIZE


@pytest.mark.parametrize("cid_version", [0, 1])
def test_put_get_round_trip_bytes_and_path(tmp_path: Path, cid_version: int) -> None:
    store = LocalStore(tmp_path / "s")
    data = payload(3 * DEFAULT_CHUNK_SIZE + 5)
    cid = store.put(data, cid_version=cid_version)
    assert cid == file_cid(data, cid_version=cid_version)
    assert store.get(cid) == data and store.has(cid)
    source = tmp_path / "model.bin"
    source.write_bytes(data)
    assert store.put(source, cid_version=cid_version) == cid
    assert store.put(str(source), cid_version=cid_version) == cid


def test_known_cids_and_empty_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert store.put(b"") == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    assert store.get("QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH") == b""
    assert store.put(b"hello world\n", cid_version=1) == "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


def test_v0_and_v1_of_one_node_share_a_block(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    v0 = store.put(payload(DEFAULT_CHUNK_SIZE * 2))
    from multiformats import CID

    v1 = str(CID.decode(v0).set(version=1, base="base32"))
    assert store.has(v1) and store.get(v1) == store.get(v0)


def test_tampered_block_on_disk_raises_and_returns_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    data = payload(2 * DEFAULT_CHUNK_SIZE + 1)
    cid = store.put(data)
    leaf_files = sorted((tmp_path / "blocks").glob("*/*"), key=lambda p: p.stat().st_size)
    victim = leaf_files[-1]  # a full 256 KiB leaf
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(ContentMismatch):
        store.get(cid)
    with pytest.raises(ContentMismatch):
        store.pin(cid)


def test_missing_and_unknown_content(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    absent = file_cid(b"never stored")
    assert not store.has(absent)
    with pytest.raises(ContentNotFound):
        store.get(absent)
    with pytest.raises(ContentNotFound):
        store.pin(absent)
    data = payload(3 * DEFAULT_CHUNK_SIZE)
    cid = store.put(data)
    next(iter(sorted((tmp_path / "blocks").glob("*/*"), key=lambda p: p.stat().st_size))).unlink()
    with pytest.raises(ContentNotFound):
        store.get(cid)


def test_size_limits(tmp_path: Path) -> None:
    big = payload(DEFAULT_CHUNK_SIZE * 2)
    with pytest.raises(ContentTooLarge):
        LocalStore(tmp_path, max_size=len(big) - 1).put(big)
    cid = LocalStore(tmp_path).put(big)
    with pytest.raises(ContentTooLarge):
        LocalStore(tmp_path, max_size=len(big) - 1).get(cid)
    assert LocalStore(tmp_path, max_size=len(big)).get(cid) == big
    with pytest.raises(StorageError, match="chunk size"):
        LocalStore(tmp_path).put(big, chunk_size=2 * 1024 * 1024)


def test_pin_unpin_gc(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    keep = payload(3 * DEFAULT_CHUNK_SIZE, seed=1)
    drop = payload(3 * DEFAULT_CHUNK_SIZE, seed=2)
    keep_cid, drop_cid = store.put(keep), store.put(drop)
    assert set(store.pins()) == {keep_cid, drop_cid}
    store.unpin(drop_cid)
    store.unpin(drop_cid)  # idempotent
    assert store.gc() == 4  # three leaves and the root of `drop`
    assert not store.has(drop_cid) and store.get(keep_cid) == keep
    assert store.gc() == 0
    store.unpin(keep_cid)
    store.pin(keep_cid)  # still present, pinned again
    assert store.gc() == 0 and store.get(keep_cid) == keep


_WORKER = """
import sys
from coopml.storage import LocalStore
root, seed = sys.argv[1], int(sys.argv[2])
import random
store = LocalStore(root)
cids = []
for i in range(6):
    data = random.Random(i if i % 2 else seed * 100 + i).randbytes(300_000 + i)
    cids.append(store.put(data))
for i, cid in enumerate(cids):
    assert store.get(cid) == random.Random(i if i % 2 else seed * 100 + i).randbytes(300_000 + i)
print(" ".join(cids))
"""


def test_several_processes_share_one_root(tmp_path: Path) -> None:
    """Four processes write overlapping and distinct files at once; every file reads back intact."""
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path), str(seed)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in range(4)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out.split())
    store = LocalStore(tmp_path)
    shared = {tuple(o[1::2]) for o in outputs}
    assert len(shared) == 1  # same bytes, same CIDs, whichever process wrote them
    for cids in outputs:
        for cid in cids:
            assert store.has(cid)
            store.get(cid)
    assert not any((tmp_path / "tmp").iterdir())  # no temp file left behind


def test_open_store_specs(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path / "a"), LocalStore)
    local = open_store(f"local:{tmp_path / 'b'}", max_size=10)
    assert isinstance(local, LocalStore) and local.max_size == 10
    kubo = open_store("http://127.0.0.1:5001", timeout=3.0)
    assert isinstance(kubo, KuboStore) and kubo.timeout == 3.0
    with pytest.raises(StorageError):
        open_store("local:")


_PUTTER = """
import sys, random
from coopml.storage import LocalStore
store = LocalStore(sys.argv[1])
for i in range(10):
    print(store.put(random.Random(i).randbytes(3 * 262144 + i)), flush=True)
"""


def test_gc_never_eats_a_put_in_flight(tmp_path: Path) -> None:
    """gc runs in a loop while another process puts: every pinned file stays whole."""
    store = LocalStore(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", _PUTTER, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rounds = 0
    while proc.poll() is None:
        store.gc()
        rounds += 1
        time.sleep(0.005)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    cids = out.split()
    assert len(cids) == 10 and rounds > 0
    import random

    for i, cid in enumerate(cids):
        assert store.get(cid) == random.Random(i).randbytes(3 * 262144 + i)
