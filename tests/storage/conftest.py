"""Real js-ipfs daemons on loopback, started once per session and stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from coopml.storage.daemon import IpfsDaemon, generate_swarm_key, node_binary, start_daemon


@dataclass
class Swarm:
    public_a: IpfsDaemon  # plain offline nodes (no swarm key)
    public_b: IpfsDaemon
    private_a: IpfsDaemon  # members of one private network
    private_b: IpfsDaemon
    stranger: IpfsDaemon  # a private network with another key


@pytest.fixture(scope="session")
def ipfs_swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    if node_binary() is None:
        pytest.skip("node (Node.js 20) is not installed: js-ipfs daemons cannot run")
    base = tmp_path_factory.mktemp("ipfs")
    key, other_key = generate_swarm_key(), generate_swarm_key()
    plan: list[tuple[str, bytes | None]] = [
        ("public_a", None), ("public_b", None), ("private_a", key), ("private_b", key), ("stranger", other_key),
    ]
    with ThreadPoolExecutor(len(plan)) as pool:
        futures = {name: pool.submit(start_daemon, Path(base, name), swarm_key=k) for name, k in plan}
    started = {name: f.result() for name, f in futures.items() if f.exception() is None}
    try:
        failed = [f"{name}: {f.exception()}" for name, f in futures.items() if f.exception() is not None]
        if failed:
            raise RuntimeError("IPFS daemons failed to start: " + "; ".join(failed))
        yield Swarm(**started)
    finally:
        for daemon in started.values():
            daemon.stop()


@pytest.fixture(scope="session")
def ipfs_daemon(ipfs_swarm: Swarm) -> IpfsDaemon:
    return ipfs_swarm.public_a
