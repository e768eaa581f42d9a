"""Services on testbed hosts: the chain node (anvil) and one js-ipfs daemon per host that needs
storage, joined into a private swarm by a shared swarm key (the paper's private IPFS network).

Every service binds to its host's namespace address (anvil, the IPFS swarm) or to the
namespace's own loopback (the IPFS RPC API, used only by the agent on the same host); nothing
listens on the machine's own interfaces. Without DHT or MDNS the daemons find each other only
through explicit `swarm/connect`; a `PeeringKeeper` redials dropped connections (after a link
cut), as Kubo's Peering.Peers would.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from coopml.paths import node_modules, write_private
from coopml.testbed.errors import TestbedError
from coopml.testbed.topology import Testbed

CHAIN_PORT = 8545
IPFS_SWARM_PORT = 4001
IPFS_API = "http://127.0.0.1:5001"


def _rpc(url: str, method: str, params: list | None = None, timeout: float = 5.0) -> Any:
    r = requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}, timeout=timeout)
    r.raise_for_status()
    body = r.json()
    if "error" in body:
        raise TestbedError(f"{method} on {url}: {body['error']}")
    return body["result"]


def start_chain(tb: Testbed, host: str, block_time: float, *, probe_from: str, timeout: float = 60.0) -> str:
    """anvil on `host` (its namespace address), sealing a block every `block_time` s; returns its URL."""
    from coopml.chain.processes import anvil_binary
    binary = anvil_binary()
    if binary is None:
        raise TestbedError(f"anvil not found under {node_modules()}; run scripts/setup.sh (npm ci)")
    h = tb.host(host)
    url = f"http://{h.ip}:{CHAIN_PORT}"
    cmd = [str(binary), "--host", h.ip, "--port", str(CHAIN_PORT), "--accounts", "2", "--balance", "1000000",
           "--block-time", f"{block_time:g}", "--silent"]
    popen = tb.spawn(host, "anvil", cmd, log=tb.run_dir / "logs" / "anvil.log")
    deadline = time.monotonic() + timeout

    def ready() -> bool:
        try:
            _rpc(url, "eth_chainId", timeout=2)
            return True
        except (requests.RequestException, TestbedError):
            return False
    while not tb.call(probe_from, ready):
        if popen.poll() is not None:
            raise TestbedError(f"anvil exited with code {popen.returncode}; see {tb.run_dir}/logs/anvil.log")
        if time.monotonic() > deadline:
            raise TestbedError(f"anvil on {url} did not answer from {probe_from} within {timeout:.0f} s")
        time.sleep(0.3)
    tb.state.services["chain_url"] = url
    tb.state.services["block_time"] = f"{block_time:g}"
    tb.sf.save()
    return url


# ------------------------------------------------------------------------------ IPFS


@dataclass
class IpfsPeer:
    host: str
    peer_id: str
    swarm_addr: str       # /ip4/<host ip>/tcp/4001/p2p/<peer id>


def _api(command: str, timeout: float = 10.0, **params: str) -> Any:
    r = requests.post(f"{IPFS_API}/api/v0/{command}", params=params, timeout=timeout)
    if r.status_code != 200:
        raise TestbedError(f"IPFS {command} failed ({r.status_code}): {r.text[:300]}")
    return r.json() if r.text.strip() else None


def _testbed_config(config: dict[str, Any], ip: str) -> dict[str, Any]:
    from coopml.storage.daemon import offline_config
    config = offline_config(config)
    config["Addresses"].update({"Swarm": [f"/ip4/{ip}/tcp/{IPFS_SWARM_PORT}"], "API": "/ip4/127.0.0.1/tcp/5001",
                                "Gateway": "/ip4/127.0.0.1/tcp/0"})
    return config


def repo_path(run_dir: Path, host: str) -> Path:
    return Path(run_dir) / "nodes" / host / "ipfs-repo"


def init_repos(run_dir: Path, hosts: list[str], swarm_key: bytes) -> dict[str, Path]:
    """`jsipfs init` one repo per host, in parallel, with the swarm key. Needs no network, so it
    can run while the testbed is being built."""
    from coopml.storage.daemon import init_repo

    write_private(Path(run_dir) / "swarm.key", swarm_key)

    def init(host: str) -> Path:
        repo = repo_path(run_dir, host)
        if not (repo / "config").is_file():
            init_repo(repo, swarm_key=swarm_key, timeout=180)
        return repo
    with ThreadPoolExecutor(len(hosts) or 1) as pool:
        return dict(zip(hosts, pool.map(init, hosts)))


def start_ipfs(tb: Testbed, hosts: list[str], swarm_key: bytes, timeout: float = 180.0) -> dict[str, IpfsPeer]:
    """One js-ipfs daemon per host (API on the namespace's loopback, swarm on its address), all
    with `swarm_key`; then every pair is connected over the emulated network."""
    from coopml.storage.daemon import init_repo, node_binary

    node = node_binary()
    if node is None:
        raise TestbedError("node is not installed; the IPFS daemons need Node.js")
    launcher = Path(init_repo.__code__.co_filename).with_name("jsipfs_daemon.mjs")
    repos = init_repos(tb.run_dir, hosts, swarm_key)      # no-op for repos initialised ahead
    for host, repo in repos.items():
        cfg_path = repo / "config"
        cfg_path.write_text(json.dumps(_testbed_config(json.loads(cfg_path.read_text()), tb.host(host).ip), indent=2))
        (repo / "api").unlink(missing_ok=True)
    logs: dict[str, Path] = {}
    for host, repo in repos.items():
        logs[host] = tb.run_dir / "logs" / f"ipfs-{host}.log"
        tb.spawn(host, f"ipfs-{host}", [node, str(launcher), str(node_modules())], log=logs[host],
                 env={**os.environ, "IPFS_PATH": str(repo)})
    peers: dict[str, IpfsPeer] = {}
    deadline = time.monotonic() + timeout
    for host in hosts:
        while True:
            popen = tb.launcher.popens[f"ipfs-{host}"]
            if popen.poll() is not None:
                raise TestbedError(f"IPFS daemon on {host} exited with code {popen.returncode}: "
                                   f"{logs[host].read_text(errors='replace')[-600:]}")
            if "Daemon is ready" in logs[host].read_text(errors="replace"):
                try:
                    pid = str(tb.call(host, _api, "id", timeout=5)["ID"])
                    break
                except (requests.RequestException, TestbedError):
                    pass
            if time.monotonic() > deadline:
                raise TestbedError(f"IPFS daemon on {host} not ready within {timeout:.0f} s; see {logs[host]}")
            time.sleep(0.3)
        ip = tb.host(host).ip
        peers[host] = IpfsPeer(host, pid, f"/ip4/{ip}/tcp/{IPFS_SWARM_PORT}/p2p/{pid}")
    connect_mesh(tb, peers)
    tb.state.services.update({f"ipfs:{h}": p.swarm_addr for h, p in peers.items()})
    tb.sf.save()
    return peers


def _connected_peers() -> set[str]:
    return {p["Peer"] for p in (_api("swarm/peers") or {}).get("Peers") or []}


def connect_mesh(tb: Testbed, peers: dict[str, IpfsPeer], timeout: float = 15.0) -> int:
    """Dial every missing pair (lower name dials higher). Returns the number of dials made."""
    dials = 0
    names = sorted(peers)
    for i, a in enumerate(names):
        have = tb.call(a, _connected_peers)
        for b in names[i + 1:]:
            if peers[b].peer_id not in have:
                tb.call(a, _api, "swarm/connect", timeout=timeout, arg=peers[b].swarm_addr)
                dials += 1
    return dials


class PeeringKeeper:
    """Every `interval` s, redial swarm connections that dropped (e.g. after a link cut)."""

    def __init__(self, tb: Testbed, peers: dict[str, IpfsPeer], interval: float = 3.0,
                 log: Callable[[str], None] = lambda m: None) -> None:
        self.tb, self.peers, self.interval, self.log = tb, peers, interval, log
        self.redials = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ipfs-peering", daemon=True)

    def start(self) -> PeeringKeeper:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            names = sorted(self.peers)
            for i, a in enumerate(names):
                if not self.tb.link_is_up(a):
                    continue
                try:
                    have = self.tb.call(a, _connected_peers)
                except (requests.RequestException, TestbedError):
                    continue
                for b in names[i + 1:]:
                    if self.peers[b].peer_id in have or not self.tb.link_is_up(b):
                        continue
                    try:
                        self.tb.call(a, _api, "swarm/connect", timeout=10, arg=self.peers[b].swarm_addr)
                        self.redials += 1
                        self.log(f"ipfs: {a} redialed {b}")
                    except (requests.RequestException, TestbedError):
                        pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
