"""The switch the hosts' links meet in: Open vSwitch (userspace `netdev` datapath, no kernel
module needed) under an OpenFlow controller, or a plain Linux bridge when OVS is unavailable.

If an Open vSwitch service already runs on the machine (its ovsdb socket answers) the bridge is
added to it and only the bridge is removed at the end; otherwise this run starts its own
ovsdb-server and ovs-vswitchd with their database, sockets and logs in a folder of its own and
stops exactly those two processes (by recorded PID) at the end.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from coopml.testbed.errors import TestbedError
from coopml.testbed.netns import sh
from coopml.testbed.procs import Launcher
from coopml.testbed.state import StateFile, state_dir

OVS_TOOLS = ("ovs-vsctl", "ovs-ofctl", "ovs-vswitchd", "ovsdb-server", "ovsdb-tool")
OVS_SCHEMA_PATHS = (Path("/usr/share/openvswitch/vswitch.ovsschema"),)
SYSTEM_OVS_RUNDIR = Path("/var/run/openvswitch")


def ovs_missing() -> str | None:
    """Why OVS cannot be used here, or None if it can."""
    missing = [t for t in OVS_TOOLS if shutil.which(t) is None]
    if missing:
        return f"Open vSwitch tools not installed ({', '.join(missing)}; Debian package openvswitch-switch)"
    if _schema() is None:
        return "Open vSwitch schema vswitch.ovsschema not found"
    return None


def ovs_busy() -> str | None:
    """Why this run cannot start its own ovs-vswitchd, or None. A userspace datapath creates the
    tap device `ovs-netdev`; a second vswitchd in the same namespace cannot, so while another
    one (another testbed run, or a service we do not manage) owns it, only that one can be used."""
    if Path("/sys/class/net/ovs-netdev").exists() and system_ovs() is None:
        return ("another ovs-vswitchd (another testbed run?) already owns the userspace datapath device "
                "ovs-netdev on this machine; one OVS-based run at a time (see `coopml testbed status`)")
    return None


def _schema() -> Path | None:
    return next((p for p in OVS_SCHEMA_PATHS if p.is_file()), None)


def system_ovs() -> tuple[str, str] | None:
    """(rundir, db) of an Open vSwitch service already running here, if its ovsdb answers."""
    sock = SYSTEM_OVS_RUNDIR / "db.sock"
    if not sock.exists() or shutil.which("ovs-vsctl") is None:
        return None
    db = f"unix:{sock}"
    r = sh(["ovs-vsctl", f"--db={db}", "--timeout=2", "show"], check=False)
    ok = r.returncode == 0 and (SYSTEM_OVS_RUNDIR / "ovs-vswitchd.pid").exists()
    return (str(SYSTEM_OVS_RUNDIR), db) if ok else None


class OvsSwitch:
    kind = "ovs"

    def __init__(self, sf: StateFile, launcher: Launcher) -> None:
        self.sf = sf
        self.launcher = launcher
        st = sf.state
        self.bridge = st.bridge or f"tb{st.run_id}br"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "OVS_RUNDIR": self.sf.state.ovs_rundir or ""}

    def vsctl(self, *args: str, check: bool = True) -> str:
        return sh(["ovs-vsctl", f"--db={self.sf.state.ovs_db}", "--timeout=10", *args], env=self.env,
                  check=check).stdout

    def ofctl(self, *args: str) -> str:
        return sh(["ovs-ofctl", "-O", "OpenFlow13", *args], env=self.env).stdout

    def start(self, controller_port: int | None) -> None:
        st = self.sf.state
        found = system_ovs()
        if found:
            st.ovs_rundir, st.ovs_db = found
        else:
            self._start_daemons()
        st.switch_kind, st.bridge = "ovs", self.bridge
        self.sf.save()
        dpid = f"{int(st.run_id, 16):016x}"
        cmd = ["--may-exist", "add-br", self.bridge, "--", "set", "bridge", self.bridge, "datapath_type=netdev",
               "protocols=OpenFlow13", "fail-mode=secure", f"other-config:datapath-id={dpid}",
               "other-config:disable-in-band=true"]
        if controller_port:
            cmd += ["--", "set-controller", self.bridge, f"tcp:127.0.0.1:{controller_port}"]
        self.vsctl(*cmd)
        # the bridge's own (internal) port carries no host address: keep it down
        deadline = time.monotonic() + 10
        while not Path("/sys/class/net", self.bridge).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _start_daemons(self) -> None:
        st = self.sf.state
        rundir = state_dir() / f"{st.run_id}-ovs"   # short path: unix socket names are limited to 107 bytes
        rundir.mkdir(parents=True, exist_ok=True)
        st.ovs_rundir, st.ovs_db = str(rundir), f"unix:{rundir / 'db.sock'}"
        self.sf.save()
        schema = _schema()
        assert schema is not None
        db = rundir / "conf.db"
        if not db.exists():
            sh(["ovsdb-tool", "create", str(db), str(schema)])
        logs = Path(st.run_dir) / "logs"
        self.launcher.spawn("ovsdb-server", ["ovsdb-server", str(db), f"--remote=punix:{rundir / 'db.sock'}",
                                             f"--unixctl={rundir / 'ovsdb-server.ctl'}",
                                             f"--log-file={logs / 'ovsdb-server.log'}"],
                            log=logs / "ovsdb-server.out", env=self.env, tier="infra")
        self._wait_for(rundir / "db.sock", "ovsdb-server")
        self.vsctl("--no-wait", "init")
        self.launcher.spawn("ovs-vswitchd", ["ovs-vswitchd", st.ovs_db, f"--unixctl={rundir / 'ovs-vswitchd.ctl'}",
                                             f"--log-file={logs / 'ovs-vswitchd.log'}"],
                            log=logs / "ovs-vswitchd.out", env=self.env, tier="infra")
        self._wait_for(rundir / "ovs-vswitchd.ctl", "ovs-vswitchd")

    def _wait_for(self, path: Path, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            popen = self.launcher.popens.get(what)
            if popen is not None and popen.poll() is not None:
                raise TestbedError(f"{what} exited with code {popen.returncode}; see {self.sf.state.run_dir}/logs")
            if time.monotonic() > deadline:
                raise TestbedError(f"{what} did not create {path} within {timeout:.0f} s")
            time.sleep(0.05)

    def add_port(self, dev: str, ofport: int) -> None:
        self.vsctl("add-port", self.bridge, dev, "--", "set", "interface", dev, f"ofport_request={ofport}")

    def controller_connected(self) -> bool:
        return self.vsctl("get", "controller", self.bridge, "is_connected", check=False).strip() == "true"

    def dump_flows(self) -> str:
        """The switch's flow table as `ovs-ofctl -O OpenFlow13 dump-flows` prints it."""
        return self.ofctl("dump-flows", self.bridge)


class LinuxBridge:
    """Fallback: a kernel bridge (MAC learning, no controller, no flow table)."""

    kind = "linux-bridge"

    def __init__(self, sf: StateFile, launcher: Launcher) -> None:
        self.sf = sf
        self.bridge = sf.state.bridge or f"tb{sf.state.run_id}br"

    def start(self, controller_port: int | None) -> None:
        st = self.sf.state
        st.switch_kind, st.bridge = "linux-bridge", self.bridge
        self.sf.save()
        sh(["ip", "link", "add", self.bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0"])
        sh(["ip", "link", "set", self.bridge, "up"])

    def add_port(self, dev: str, ofport: int) -> None:
        sh(["ip", "link", "set", dev, "master", self.bridge])

    def controller_connected(self) -> bool:
        return False

    def dump_flows(self) -> str:
        raise TestbedError("a Linux bridge has no OpenFlow table (this run fell back from Open vSwitch)")


Switch = OvsSwitch | LinuxBridge
