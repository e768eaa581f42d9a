"""Against real js-ipfs daemons (Kubo RPC API) on loopback: CIDs, KuboStore, two peers, private network."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from multiformats import CID
from storage_cases import SIZES, payload

from coopml.errors import ContentMismatch, ContentNotFound, ContentTooLarge, StorageError, StorageUnavailable
from coopml.storage import KuboStore, LocalStore, file_cid
from coopml.storage.daemon import IpfsDaemon
from coopml.storage.store import flatfs_key
from coopml.storage.unixfs import DEFAULT_CHUNK_SIZE, MAX_LINKS, build_file, chunk_bytes, parse_cid

pytestmark = pytest.mark.ipfs



def daemon_add(daemon: IpfsDaemon, data: bytes, **params: str) -> str:
    """`ipfs add` through the RPC API directly, with an explicit part Content-Type."""
    if params.get("cid-version") == "1":
        params["cid-base"] = "base32"
    response = requests.post(f"{daemon.api_url}/api/v0/add", params=params, timeout=120,
                             files={"file": ("f", data, "application/octet-stream")})
    response.raise_for_status()
    return response.json()["Hash"]


@pytest.mark.parametrize("name", list(SIZES))
def test_cids_equal_the_daemons(ipfs_daemon: IpfsDaemon, name: str) -> None:
    data = payload(SIZES[name])
    assert daemon_add(ipfs_daemon, data) == file_cid(data)
    assert daemon_add(ipfs_daemon, data, **{"cid-version": "1", "raw-leaves": "true"}) == file_cid(data, cid_version=1)


def test_known_cids_from_the_daemon(ipfs_daemon: IpfsDaemon) -> None:
    assert daemon_add(ipfs_daemon, b"") == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    assert daemon_add(ipfs_daemon, b"hello world\n") == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    assert daemon_add(ipfs_daemon, b"hello world\n", **{"cid-version": "1", "raw-leaves": "true"}) == \
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


@pytest.mark.parametrize("cid_version", [0, 1])
def test_multi_level_tree_cids(ipfs_daemon: IpfsDaemon, cid_version: int) -> None:
    """175 chunks need a root above two internal nodes; 1 KiB chunks keep the test small."""
    data = payload(MAX_LINKS * 1024 * 2 + 17)
    params = {"chunker": "size-1024", "cid-version": str(cid_version), "raw-leaves": str(cid_version == 1).lower()}
    assert daemon_add(ipfs_daemon, data, **params) == file_cid(data, cid_version=cid_version, chunk_size=1024)


def test_multi_level_tree_default_chunker(ipfs_daemon: IpfsDaemon) -> None:
    """175 default 256 KiB chunks (43.75 MiB + 1 byte), both CID flavours."""
    data = payload(MAX_LINKS * DEFAULT_CHUNK_SIZE + 1)
    store = KuboStore(ipfs_daemon.api_url)
    for version in (0, 1):
        cid = store.put(data, cid_version=version)  # put itself checks the daemon's CID against ours
        assert cid == file_cid(data, cid_version=version)
    assert store.get(cid) == data


@pytest.mark.parametrize("cid_version", [0, 1])
def test_kubo_store_round_trip(ipfs_daemon: IpfsDaemon, tmp_path: Path, cid_version: int) -> None:
    store = KuboStore(ipfs_daemon.api_url)
    data = payload(2 * DEFAULT_CHUNK_SIZE + 3, seed=cid_version)
    cid = store.put(data, cid_version=cid_version)
    assert cid == LocalStore(tmp_path).put(data, cid_version=cid_version)
    assert store.has(cid) and store.get(cid) == data
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    assert store.put(path, cid_version=cid_version) == cid
    pins = ipfs_daemon.rpc("pin/ls", type="recursive")["Keys"]
    assert any(parse_cid(k) == parse_cid(cid) for k in pins)
    store.unpin(cid)
    pins = ipfs_daemon.rpc("pin/ls", type="recursive")["Keys"]
    assert not any(parse_cid(k) == parse_cid(cid) for k in pins)
    store.unpin(cid)  # not pinned: no error
    store.pin(cid)
    assert any(parse_cid(k) == parse_cid(cid) for k in ipfs_daemon.rpc("pin/ls", type="recursive")["Keys"])


def test_tampered_block_in_daemon_repo_is_refused(ipfs_daemon: IpfsDaemon) -> None:
    """Corrupt a leaf inside the daemon's own flatfs: the daemon serves it, KuboStore refuses it."""
    with KuboStore(ipfs_daemon.api_url) as store:
        data = payload(3 * DEFAULT_CHUNK_SIZE, seed=42)
        cid = store.put(data)
        leaf, corrupted = _corrupt_first_leaf(ipfs_daemon, data)
        served = requests.post(f"{ipfs_daemon.api_url}/api/v0/block/get", params={"arg": str(leaf)}, timeout=30)
        assert served.content == corrupted  # the daemon itself does not notice
        with pytest.raises(ContentMismatch, match="does not match its hash"):
            store.get(cid)


def _corrupt_first_leaf(ipfs_daemon: IpfsDaemon, data: bytes) -> tuple[CID, bytes]:
    leaf = next(build_file(chunk_bytes(data))).cid  # the first leaf, as the daemon stored it
    key = flatfs_key(leaf)
    block_file = ipfs_daemon.repo / "blocks" / key[-3:-1] / f"{key}.data"
    raw = bytearray(block_file.read_bytes())
    raw[50] ^= 0x01
    block_file.write_bytes(bytes(raw))
    return leaf, bytes(raw)


def test_size_limits_and_errors(ipfs_daemon: IpfsDaemon) -> None:
    data = payload(3 * DEFAULT_CHUNK_SIZE, seed=7)
    cid = KuboStore(ipfs_daemon.api_url).put(data)
    small = KuboStore(ipfs_daemon.api_url, max_size=len(data) - 1)
    with pytest.raises(ContentTooLarge):
        small.get(cid)
    with pytest.raises(ContentTooLarge):
        small.put(data)
    with pytest.raises(ContentMismatch, match="not a valid CID"):
        small.get("QmNotACid")


def test_missing_content_times_out(ipfs_daemon: IpfsDaemon) -> None:
    store = KuboStore(ipfs_daemon.api_url, timeout=2.0, has_timeout=0.5)
    absent = file_cid(b"nobody stored this " + payload(64))
    assert not store.has(absent)
    started = time.monotonic()
    with pytest.raises(ContentNotFound):
        store.get(absent)
    assert time.monotonic() - started < 10


def test_unreachable_api_is_reported() -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StorageUnavailable):
        KuboStore(f"http://127.0.0.1:{port}", timeout=2).get(file_cid(b"x"))


def test_daemons_bind_loopback_only(ipfs_swarm) -> None:
    for daemon in vars(ipfs_swarm).values():
        assert daemon.api_url.startswith("http://127.0.0.1:")
        addrs = daemon.swarm_addrs()
        assert addrs and all(a.startswith("/ip4/127.0.0.1/") for a in addrs)
        assert daemon.rpc("bootstrap/list")["Peers"] == []


def test_content_added_on_one_peer_is_fetched_from_the_other(ipfs_swarm) -> None:
    a, b = ipfs_swarm.public_a, ipfs_swarm.public_b
    data = payload(2 * DEFAULT_CHUNK_SIZE + 99, seed=5)
    cid = KuboStore(a.api_url).put(data, cid_version=1)
    assert not KuboStore(b.api_url, has_timeout=0.5).has(cid)
    b.connect(a)
    assert a.peer_id() in b.peers()
    fetched = KuboStore(b.api_url, timeout=30)
    assert fetched.get(cid) == data
    assert fetched.has(cid)


def test_private_network_admits_members_and_refuses_others(ipfs_swarm) -> None:
    member, other_member = ipfs_swarm.private_a, ipfs_swarm.private_b
    data = payload(DEFAULT_CHUNK_SIZE + 1, seed=9)
    cid = KuboStore(member.api_url).put(data)
    other_member.connect(member)
    assert member.peer_id() in other_member.peers()
    assert KuboStore(other_member.api_url, timeout=30).get(cid) == data
    for outsider in (ipfs_swarm.stranger, ipfs_swarm.public_b):  # another key; no key at all
        with pytest.raises(StorageError):
            outsider.connect(member, timeout=5)
        assert member.peer_id() not in outsider.peers()
        assert outsider.peer_id() not in member.peers()
    # the network's key and each node's identity key stay with the node's owner
    for node in (member, other_member, ipfs_swarm.stranger):
        assert node.repo.stat().st_mode & 0o777 == 0o700
        assert (node.repo / "swarm.key").stat().st_mode & 0o777 == 0o600
        assert (node.repo / "config").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("params", [
    {"cid-version": "1", "raw-leaves": "false"},
    {"cid-version": "1", "raw-leaves": "true", "trickle": "true", "chunker": "size-1024"},
    {"cid-version": "0", "trickle": "true", "chunker": "size-4096"},
])
def test_get_verifies_dags_built_with_other_options(ipfs_daemon: IpfsDaemon, params: dict[str, str]) -> None:
    """No options are recorded or guessed: the walk verifies whatever DAG the CID names."""
    data = payload(300_000, seed=11)
    cid = daemon_add(ipfs_daemon, data, **params)
    chunk = int(params.get("chunker", f"size-{DEFAULT_CHUNK_SIZE}")[5:])
    assert cid != file_cid(data, cid_version=int(params["cid-version"]), chunk_size=chunk)  # not our layout
    assert KuboStore(ipfs_daemon.api_url).get(cid) == data
