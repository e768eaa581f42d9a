"""Start the os-ken controller (controller_app.py) from its own venv, as a separate process on
127.0.0.1, with the topology it needs to program the switch."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from coopml.testbed.errors import TestbedUnavailable

if TYPE_CHECKING:
    from coopml.testbed.topology import Testbed

APP = Path(__file__).with_name("controller_app.py")


def topology_for_controller(tb: Testbed) -> dict:
    return {"run_id": tb.state.run_id,
            "hosts": {h.host_if: {"name": h.name, "mac": h.mac, "ip": h.ip, "index": i}
                      for i, h in enumerate(tb.state.hosts.values(), start=1)}}


def start_controller(tb: Testbed, port: int, timeout: float = 60.0) -> None:
    from coopml.testbed.topology import osken_python
    python = osken_python()
    if python is None:
        raise TestbedUnavailable("os-ken venv not found (set COOPML_OSKEN_VENV or run scripts/setup.d/40-testbed.sh)")
    folder = tb.run_dir / "controller"
    folder.mkdir(parents=True, exist_ok=True)
    topo = folder / "topology.json"
    topo.write_text(json.dumps(topology_for_controller(tb), indent=1))
    log = tb.run_dir / "logs" / "controller.log"
    popen = tb.launcher.spawn("controller", [str(python), str(APP), str(topo), str(port)], log=log,
                              stdout=folder / "events.jsonl")
    # wait until it listens (os-ken takes a few seconds to import under load)
    import socket
    deadline = time.monotonic() + timeout
    while True:
        if popen.poll() is not None:
            raise TestbedUnavailable(f"the os-ken controller exited with code {popen.returncode}: "
                                     f"{log.read_text(errors='replace')[-800:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TestbedUnavailable(f"the os-ken controller did not listen on 127.0.0.1:{port} within {timeout:.0f} s")
        time.sleep(0.2)
