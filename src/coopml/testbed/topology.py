"""The emulated network: one network namespace per host, each with one link to the switch.

    [host ns: eth0 198.18.0.x] --veth-- [wire ns: w0 <relay> w1] --veth-- tb<run><nn> == switch
                          (tbf: upload)                          (tbf: download)

A host's link is the veth pair whose host-side end (`tb<run><nn>`) is a port of the switch; its
interface counters are the host's traffic. When the link has a delay, a second namespace per host
holds the delay relay between the host's own veth and the link (it has no addresses, so its
kernel never answers for anyone); without a delay the host's eth0 is the link's far end. IPv6 is
off everywhere (no router solicitations or MLD noise in the counters), TX checksum offload and
segmentation offloads are off on every veth (the userspace datapath forwards frames as they are,
and a relay must see wire-sized frames). The host namespace (root) gets no address: the only
traffic is between namespaces this run created, all in 198.18.0.0/24 (RFC 2544 benchmarking).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import coopml
from coopml.testbed.errors import TestbedError, TestbedUnavailable
from coopml.testbed.netns import (
    link_exists,
    require_root,
    require_tools,
    run_in_netns,
    sh,
)
from coopml.testbed.presets import LinkProfile, Preset
from coopml.testbed.procs import Launcher
from coopml.testbed.state import HostRecord, StateFile, teardown
from coopml.testbed.switch import LinuxBridge, OvsSwitch, Switch, ovs_busy, ovs_missing

T = TypeVar("T")
SUBNET_PREFIX = "198.18.0."
MTU = 1500
MIN_BURST = 16_000
SRC_DIR = str(Path(coopml.__file__).resolve().parents[1])


def osken_python() -> Path | None:
    """Python of the os-ken venv: $COOPML_OSKEN_VENV, else <coopml home>/osken-venv (scripts/setup.d/40-testbed.sh)."""
    import os

    from coopml.paths import home
    for venv in (os.environ.get("COOPML_OSKEN_VENV"), str(home() / "osken-venv")):
        if venv and (Path(venv) / "bin" / "python").exists():
            return Path(venv) / "bin" / "python"
    return None


def _python_env() -> dict[str, str]:
    import os
    return {**os.environ, "PYTHONPATH": SRC_DIR + (":" + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
            "PYTHONUNBUFFERED": "1"}


def tbf_args(rate_mbit: float, queue_ms: float) -> list[str]:
    rate_bytes = rate_mbit * 1e6 / 8
    burst = max(MIN_BURST, int(rate_bytes * 0.002))       # 2 ms of traffic, at least ~10 frames
    limit = max(burst + 4 * MTU, int(rate_bytes * queue_ms / 1000))
    return ["tbf", "rate", f"{rate_mbit:g}mbit", "burst", str(burst), "limit", str(limit)]


class Testbed:
    """A built (or attached) testbed run. Create with `Testbed.build`, reattach with `Testbed.attach`."""

    def __init__(self, sf: StateFile, launcher: Launcher, switch: Switch | None, log: Callable[[str], None]) -> None:
        self.sf = sf
        self.launcher = launcher
        self.switch = switch
        self.log = log

    @property
    def state(self):
        return self.sf.state

    @property
    def run_dir(self) -> Path:
        return Path(self.sf.state.run_dir)

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, run_dir: Path, preset: Preset, hosts: list[tuple[str, str]], *, switch: str = "auto",
              log: Callable[[str], None] = print) -> Testbed:
        """Create namespaces, links, switch (+ controller), shaping and relays for `hosts`
        ([(name, role)]; role "operator" gets an unshaped link). On any failure, everything
        created so far is torn down before the error propagates."""
        require_root()
        require_tools("ip", "tc", "ethtool")
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        sf = StateFile.create(run_dir, preset.name)
        (run_dir / "state-file").write_text(str(sf.path) + "\n")
        launcher = Launcher(sf)
        tb = cls(sf, launcher, None, log)
        try:
            tb._build(preset, hosts, switch)
        except BaseException:
            log(f"testbed {sf.state.run_id}: build failed, tearing down what was created")
            tb.down()
            raise
        return tb

    def _build(self, preset: Preset, hosts: list[tuple[str, str]], switch: str) -> None:
        st = self.state
        self.log(f"testbed {st.run_id}: {len(hosts)} hosts, preset {preset.name} ({preset.link.describe()})")
        for i, (name, role) in enumerate(hosts, start=1):
            link = None if role == "operator" else preset.link
            st.hosts[name] = HostRecord(name=name, role=role, ip=f"{SUBNET_PREFIX}{9 + i}",
                                        mac=f"02:cb:{st.run_id[:2]}:{st.run_id[2:]}:00:{i:02x}", netns=st.ns(name),
                                        wire_netns=st.ns(name) + "-w" if link and link.delay_ms > 0 else None,
                                        host_if=st.if_name(i), link=link)
        self.sf.save()
        self._guard_route()
        self.switch = self._start_switch(switch)
        for i, h in enumerate(st.hosts.values(), start=1):
            self._make_host(h, i)
        if isinstance(self.switch, OvsSwitch) and st.controller_port:
            self._wait_for_flows()
        st.phase = "up"
        self.sf.save()

    def _guard_route(self) -> None:
        """An `unreachable` route for the testbed subnet in the machine's own namespace: should
        anything there ever address a testbed host directly, the kernel refuses it locally
        instead of sending it out of the machine's real interface (the default route). Its
        metric is unique to this run, so teardown removes exactly this route."""
        st = self.state
        st.guard_metric = 3_000_000 + int(st.run_id, 16)
        self.sf.save()
        sh(["ip", "route", "add", "unreachable", st.subnet, "metric", str(st.guard_metric)])

    def _start_switch(self, wanted: str) -> Switch:
        st = self.state
        reason = None
        if wanted in ("auto", "ovs"):
            reason = ovs_missing() or ovs_busy()
            if reason is None and osken_python() is None:
                reason = ("os-ken controller venv not found (set COOPML_OSKEN_VENV or run "
                          "scripts/setup.d/40-testbed.sh)")
            if reason and wanted == "ovs":
                raise TestbedUnavailable(reason)
        elif wanted != "linux-bridge":
            raise TestbedError(f"unknown switch {wanted!r}: auto, ovs or linux-bridge")
        else:
            reason = "Linux bridge requested (--switch linux-bridge)"
        if reason is None:
            from coopml.testbed.controller import start_controller
            st.controller_port = _free_local_port()
            self.sf.save()
            start_controller(self, st.controller_port)
            sw: Switch = OvsSwitch(self.sf, self.launcher)
            sw.start(st.controller_port)
            self.log(f"switch: Open vSwitch bridge {sw.bridge} (userspace datapath) under the os-ken controller "
                     f"on 127.0.0.1:{st.controller_port}")
        else:
            st.fallback_reason = reason
            self.sf.save()
            sw = LinuxBridge(self.sf, self.launcher)
            sw.start(None)
            self.log(f"switch: FALLBACK to Linux bridge {sw.bridge} (no SDN controller, no flow table): {reason}")
        return sw

    def _new_ns(self, name: str) -> None:
        self.sf.add_namespace(name)
        sh(["ip", "netns", "add", name])
        for key in ("all", "default"):
            sh(["ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"])
        sh(["ip", "-n", name, "link", "set", "lo", "up"])

    @staticmethod
    def _offloads_off(dev: str, netns: str | None) -> None:
        cmd = ["ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off"]
        sh(cmd, netns=netns, check=False)  # some features are fixed on veth; "tx off" is what matters
        features = sh(["ethtool", "-k", dev], netns=netns).stdout
        if "tx-checksumming: off" not in features:
            raise TestbedError(f"could not turn TX checksum offload off on {dev}: the userspace switch would "
                               "forward packets with bad checksums")

    def _shape(self, dev: str, netns: str | None, link: LinkProfile) -> None:
        if not link.rate_mbit:
            return
        self.sf.add_qdisc(dev, netns)
        sh(["tc", *(["-n", netns] if netns else []), "qdisc", "replace", "dev", dev, "root",
            *tbf_args(link.rate_mbit, link.queue_ms)])

    def _make_host(self, h: HostRecord, index: int) -> None:
        assert self.switch is not None
        self._new_ns(h.netns)
        self.sf.add_link(h.host_if)
        if h.wire_netns:
            self._new_ns(h.wire_netns)
            sh(["ip", "link", "add", h.host_if, "type", "veth", "peer", "name", "w1", "netns", h.wire_netns])
            sh(["ip", "-n", h.netns, "link", "add", "eth0", "address", h.mac, "type", "veth", "peer", "name", "w0",
                "netns", h.wire_netns])
            for dev in ("w0", "w1"):
                self._offloads_off(dev, h.wire_netns)
                sh(["ip", "-n", h.wire_netns, "link", "set", dev, "up"])
        else:
            sh(["ip", "link", "add", h.host_if, "type", "veth", "peer", "name", "eth0", "netns", h.netns])
            sh(["ip", "-n", h.netns, "link", "set", "eth0", "address", h.mac])
        Path(f"/proc/sys/net/ipv6/conf/{h.host_if}/disable_ipv6").write_text("1\n")
        self._offloads_off(h.host_if, None)
        self._offloads_off("eth0", h.netns)
        sh(["ip", "-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", "eth0"])
        sh(["ip", "-n", h.netns, "link", "set", "eth0", "up"])
        if h.link:
            self._shape("eth0", h.netns, h.link)        # upload: leaves the host at the link rate
            self._shape(h.host_if, None, h.link)        # download: leaves the switch at the link rate
        self.switch.add_port(h.host_if, index)
        sh(["ip", "link", "set", h.host_if, "up"])
        if h.wire_netns and h.link:
            logs = self.run_dir / "logs"
            self.launcher.spawn(f"relay-{h.name}", [sys.executable, "-m", "coopml.testbed.relay", "w0", "w1",
                                                    f"{h.link.delay_ms:g}", "--stats",
                                                    str(logs / f"relay-{h.name}.json")],
                                netns=h.wire_netns, log=logs / f"relay-{h.name}.log", env=_python_env())

    def _wait_for_flows(self, timeout: float = 60.0) -> None:
        assert isinstance(self.switch, OvsSwitch)
        deadline = time.monotonic() + timeout
        macs = {h.mac for h in self.state.hosts.values()}
        pairs = len(macs) * (len(macs) - 1)
        while True:
            popen = self.launcher.popens.get("controller")
            if popen is not None and popen.poll() is not None:
                raise TestbedError(f"the os-ken controller exited with code {popen.returncode}; "
                                   f"see {self.run_dir}/logs/controller.log")
            flows = self.switch.dump_flows() if self.switch.controller_connected() else ""
            if all(f"dl_dst={m}" in flows for m in macs) and flows.count("priority=100,") == pairs:
                self.log(f"controller connected; flows for {len(macs)} hosts and {pairs} host pairs installed")
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"the controller did not install host flows within {timeout:.0f} s; "
                                   f"see {self.run_dir}/logs/controller.log")
            time.sleep(0.3)

    # ------------------------------------------------------------------ using

    @classmethod
    def attach(cls, sf: StateFile, log: Callable[[str], None] = print) -> Testbed:
        launcher = Launcher(sf)
        sw: Switch | None = None
        if sf.state.switch_kind == "ovs":
            sw = OvsSwitch(sf, launcher)
        elif sf.state.switch_kind == "linux-bridge":
            sw = LinuxBridge(sf, launcher)
        return cls(sf, launcher, sw, log)

    def host(self, name: str) -> HostRecord:
        try:
            return self.state.hosts[name]
        except KeyError:
            raise TestbedError(f"no host {name!r} in testbed {self.state.run_id} "
                               f"(hosts: {', '.join(self.state.hosts)})") from None

    def hosts_by_role(self, role: str) -> list[HostRecord]:
        return [h for h in self.state.hosts.values() if h.role == role]

    def spawn(self, host: str, name: str, cmd: list[str], *, log: Path, stdout: Path | None = None,
              env: dict[str, str] | None = None, python: bool = False):
        """Start `cmd` inside `host`'s namespace; python=True adds coopml to PYTHONPATH."""
        full_env = _python_env() if python else env
        if python and env:
            full_env = {**full_env, **env}  # type: ignore[dict-item]
        return self.launcher.spawn(name, cmd, netns=self.host(host).netns, log=log, stdout=stdout, env=full_env)

    def call(self, host: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run fn(*args, **kwargs) with its sockets inside `host`'s namespace."""
        return run_in_netns(self.host(host).netns, fn, *args, **kwargs)

    def counters(self) -> dict[str, dict[str, int]]:
        """Per host, bytes and packets it sent and received on its link (host-side veth counters:
        what the veth received came from the host)."""
        out = {}
        for h in self.state.hosts.values():
            base = Path("/sys/class/net", h.host_if, "statistics")
            try:
                def read(k: str, base: Path = base) -> int:
                    return int((base / k).read_text())
                out[h.name] = {"sent_bytes": read("rx_bytes"), "recv_bytes": read("tx_bytes"),
                               "sent_packets": read("rx_packets"), "recv_packets": read("tx_packets"),
                               "dropped": read("tx_dropped") + read("rx_dropped")}
            except FileNotFoundError:
                raise TestbedError(f"link {h.host_if} of {h.name} is gone (testbed torn down?)") from None
        return out

    def set_link(self, host: str, up: bool) -> None:
        """Cut (up=False) or restore a host's link, as pulling and re-plugging its cable."""
        h = self.host(host)
        sh(["ip", "link", "set", h.host_if, "up" if up else "down"])

    def link_is_up(self, host: str) -> bool:
        h = self.host(host)
        return Path("/sys/class/net", h.host_if, "operstate").read_text().strip() == "up"

    def flows(self) -> str:
        if self.switch is None:
            raise TestbedError("no switch")
        return self.switch.dump_flows()

    def controller_flows(self) -> dict:
        """The flow table as the controller last read it over OpenFlow (flows.json)."""
        path = self.run_dir / "controller" / "flows.json"
        if not path.is_file():
            raise TestbedError(f"{path} not written: is the controller running?")
        return dict(json.loads(path.read_text()))

    def traffic_matrix(self, fresh_after: float | None = None, timeout: float = 10.0
                       ) -> dict[str, dict[str, dict[str, int]]] | None:
        """{src host: {dst host: {"bytes", "packets"}}} from the per-pair flow counters the
        controller read over OpenFlow; None without a controller (Linux bridge). With
        `fresh_after`, wait for statistics read after that time."""
        if self.state.switch_kind != "ovs":
            return None
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = self.controller_flows()
            except (TestbedError, ValueError):
                data = {"t": 0.0, "flows": []}
            if fresh_after is None or data.get("t", 0.0) >= fresh_after:
                break
            if time.monotonic() > deadline:
                raise TestbedError(f"no flow statistics from the controller newer than {fresh_after:.0f}")
            time.sleep(0.2)
        names = list(self.state.hosts)
        matrix: dict[str, dict[str, dict[str, int]]] = {a: {b: {"bytes": 0, "packets": 0} for b in names if b != a}
                                                         for a in names}
        for f in data["flows"]:
            cookie = int(f["cookie"], 16)
            if f["priority"] != 100 or cookie >> 28 != 0xA:
                continue
            src, dst = names[((cookie >> 8) & 0xFF) - 1], names[(cookie & 0xFF) - 1]
            matrix[src][dst] = {"bytes": int(f["bytes"]), "packets": int(f["packets"])}
        return matrix

    def down(self) -> list[str]:
        leftovers = teardown(self.sf, self.log)
        self.launcher.reap()
        if leftovers:
            self.log(f"testbed {self.state.run_id}: could not remove: {', '.join(leftovers)}")
        else:
            self.log(f"testbed {self.state.run_id}: torn down, nothing left")
        return leftovers

    def exists(self) -> bool:
        return any(link_exists(h.host_if) for h in self.state.hosts.values())


def _free_local_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
