"""Start and stop js-ipfs daemons (Kubo RPC API) on loopback, offline, for tests and the demo.

Each daemon gets its own repo; every address (API, gateway, swarm) is 127.0.0.1 with port 0, so
the OS picks free ports and nothing races for them; the API address is read back from the repo's
`api` file. Bootstrap, delegates, MDNS, DHT routing, relay, preload and gRPC are all off, so the
node never contacts anything but the peers it is told to. With a swarm key the node joins a
private network (as in the paper's testbed) and refuses peers without the same key.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import requests

from coopml.errors import StorageError, StorageUnavailable
from coopml.paths import node_modules, write_private

_LAUNCHER = Path(__file__).with_name("jsipfs_daemon.mjs")


def node_binary() -> str | None:
    return shutil.which("node")


def generate_swarm_key() -> bytes:
    """A fresh private-network key in the swarm.key format kubo and libp2p read."""
    return f"/key/swarm/psk/1.0.0/\n/base16/\n{secrets.token_hex(32)}\n".encode()


def _jsipfs_cli() -> Path:
    cli = node_modules() / "ipfs" / "src" / "cli.js"
    if not cli.is_file():
        raise StorageUnavailable(f"js-ipfs not found at {cli}: run scripts/setup.sh (npm ci)")
    return cli


def _node() -> str:
    node = node_binary()
    if node is None:
        raise StorageUnavailable("node is not installed; js-ipfs daemons need Node.js 20")
    return node


def offline_config(config: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a js-ipfs config so the node binds to loopback only and reaches out to no one."""
    config["Addresses"] = {
        "Swarm": ["/ip4/127.0.0.1/tcp/0"], "Announce": [], "NoAnnounce": [],
        "API": "/ip4/127.0.0.1/tcp/0", "Gateway": "/ip4/127.0.0.1/tcp/0", "Delegates": [],
    }  # no "RPC": js-ipfs would open gRPC on a fixed port
    config["Bootstrap"] = []
    config.setdefault("Discovery", {})["MDNS"] = {"Enabled": False, "Interval": 10}
    config["Discovery"]["webRTCStar"] = {"Enabled": False}
    config["Routing"] = {"Type": "none"}
    config["relay"] = {"enabled": False, "hop": {"enabled": False, "active": False}}
    config.setdefault("Swarm", {})["DisableNatPortMap"] = True
    return config


def init_repo(repo: Path, *, swarm_key: bytes | None = None, timeout: float = 60.0) -> None:
    """Create an IPFS repo at `repo` with the offline loopback config (and swarm.key if given)."""
    repo.mkdir(parents=True, exist_ok=True)
    repo.chmod(0o700)          # js-ipfs writes its keychain and identity with default modes: keep others out
    env = {**os.environ, "IPFS_PATH": str(repo)}
    result = subprocess.run([_node(), str(_jsipfs_cli()), "init", "--empty-repo"], env=env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise StorageUnavailable(f"jsipfs init failed in {repo}: {result.stderr.strip()[-500:]}")
    config_path = repo / "config"
    # the config holds the node's libp2p identity key, swarm.key the private network's key: owner only
    write_private(config_path, json.dumps(offline_config(json.loads(config_path.read_text())), indent=2))
    if swarm_key is not None:
        write_private(repo / "swarm.key", swarm_key)


@dataclass
class IpfsDaemon:
    """A running js-ipfs daemon; stop it with `stop()` (by PID)."""

    repo: Path
    process: subprocess.Popen[bytes]
    api_url: str
    log_path: Path
    _http: requests.Session = field(default_factory=requests.Session, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rpc(self, command: str, timeout: float = 30.0, **params: str) -> Any:
        try:
            response = self._http.post(f"{self.api_url}/api/v0/{command}", params=params, timeout=timeout)
        except requests.RequestException as exc:
            raise StorageUnavailable(f"IPFS {command} on {self.api_url}: no answer ({exc})") from exc
        if response.status_code != 200:
            raise StorageError(f"IPFS {command} failed ({response.status_code}): {response.text[:300]}")
        return response.json() if response.text.strip() else None

    def peer_id(self) -> str:
        return str(self.rpc("id")["ID"])

    def swarm_addrs(self) -> list[str]:
        """Listen multiaddrs with /p2p/<id>, all on 127.0.0.1."""
        return [str(a) for a in self.rpc("id")["Addresses"]]

    def connect(self, other: IpfsDaemon, timeout: float = 15.0) -> None:
        """Dial `other` over loopback. StorageError if refused or not done within `timeout`, as happens
        when the two are not on the same private network (the PSK handshake never completes)."""
        self.rpc("swarm/connect", timeout=timeout, arg=other.swarm_addrs()[0])

    def peers(self) -> list[str]:
        return [p["Peer"] for p in (self.rpc("swarm/peers") or {}).get("Peers") or []]

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_daemon(repo: Path, *, swarm_key: bytes | None = None, ready_timeout: float = 90.0) -> IpfsDaemon:
    """Init `repo` if needed and start a daemon on it; return once its API answers.

    Without a swarm key this is `jsipfs daemon --enable-preload=false`; with one, our launcher runs
    the same Daemon class plus libp2p's pre-shared-key protector (js-ipfs ignores swarm.key).
    """
    if not (repo / "config").is_file():
        init_repo(repo, swarm_key=swarm_key)
    elif swarm_key is not None:
        write_private(repo / "swarm.key", swarm_key)
    (repo / "api").unlink(missing_ok=True)
    if (repo / "swarm.key").is_file():
        command = [_node(), str(_LAUNCHER), str(node_modules())]
    else:
        command = [_node(), str(_jsipfs_cli()), "daemon", "--enable-preload=false"]
    log_path = repo.parent / f"{repo.name}.log"
    env = {**os.environ, "IPFS_PATH": str(repo)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + ready_timeout
    api_file = repo / "api"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StorageUnavailable(f"IPFS daemon exited with {process.returncode}: "
                                     f"{log_path.read_text(errors='replace')[-800:]}")
        if "Daemon is ready" in log_path.read_text(errors="replace") and api_file.is_file():
            daemon = IpfsDaemon(repo, process, _api_url(api_file.read_text().strip()), log_path)
            try:
                daemon.peer_id()
                return daemon
            except (requests.RequestException, StorageError):
                daemon._http.close()
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    raise StorageUnavailable(f"IPFS daemon in {repo} not ready after {ready_timeout}s; log {log_path}")


def _api_url(multiaddr: str) -> str:
    """'/ip4/127.0.0.1/tcp/5001/http' -> 'http://127.0.0.1:5001'."""
    parts = multiaddr.strip("/").split("/")
    if len(parts) < 4 or parts[0] != "ip4" or parts[2] != "tcp":
        raise StorageUnavailable(f"unexpected API address {multiaddr!r}")
    return f"http://{parts[1]}:{parts[3]}"
