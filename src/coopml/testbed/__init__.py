"""coopml.testbed: the paper's SDN testbed (section V-A) on one Linux machine, as root.

Hosts are network namespaces joined by veth links to an Open vSwitch (userspace datapath) under
an os-ken OpenFlow controller (Linux-bridge fallback), shaped with tbf and delayed by a userspace
relay; anvil and a private js-ipfs swarm run on their own hosts. `coopml.testbed.runner.run`
runs the coopml task and FedAvg across it and reports per-node traffic and phase times;
`coopml.testbed.topology.Testbed` is the network alone; `coopml testbed up|run|down|status` is
the command line. Only `coopml.testbed.workload` knows the agents. See docs/testbed.md.

Kept light on purpose: the delay relay (`python -m coopml.testbed.relay`) starts through here.
"""

from coopml.testbed.errors import StateError, TestbedError, TestbedUnavailable
from coopml.testbed.presets import PRESETS, LinkProfile, Preset, get_preset

__all__ = ["PRESETS", "LinkProfile", "Preset", "StateError", "TestbedError", "TestbedUnavailable", "get_preset"]
