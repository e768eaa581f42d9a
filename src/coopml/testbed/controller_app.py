"""The testbed's SDN controller: an os-ken (OpenFlow 1.3) application, run as its own process
from its own venv (os-ken's dependencies conflict with coopml's pins), so it imports nothing
from coopml.

It is proactive: the orchestrator hands it the topology (switch port name -> host MAC and IP),
and as soon as the switch connects and reports its ports the controller installs, per host,
  priority 200  arp, arp_tpa=<ip>             -> output:<port>  (ARP requests go to the owner only)
  priority 100  in_port=<src>, eth_dst=<mac>  -> output:<port>  (one per host pair: the traffic matrix)
  priority  90  eth_dst=<mac>                 -> output:<port>  (fallback; stays at 0 packets)
plus priority 10 eth_dst=ff:ff:ff:ff:ff:ff -> FLOOD and a priority-0 table-miss -> CONTROLLER,
where unexpected frames are counted and dropped (a quiet network has none). Every second it asks
the switch for its flow and port statistics over OpenFlow and writes them to JSON files next to
its topology file (flows.json, ports.json), and it logs link up/down as the switch reports it.

Usage: python controller_app.py TOPOLOGY.json PORT
"""

from os_ken.lib import hub  # type: ignore[import-not-found]

hub.patch(thread=False)

import json
import os
import sys
import time

import os_ken.controller.ofp_handler  # type: ignore[import-not-found]  # noqa: F401 - registers the OpenFlow options
from os_ken import cfg
from os_ken.base import app_manager  # type: ignore[import-not-found]
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls  # type: ignore[import-not-found]
from os_ken.ofproto import ofproto_v1_3  # type: ignore[import-not-found]

TOPOLOGY_ENV = "COOPML_TESTBED_TOPOLOGY"
COOKIE_HOST = 0xC0000000
COOKIE_BASE = 0xB0000000
COOKIE_PAIR = 0xA0000000


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _log(event, **fields):
    print(json.dumps({"t": round(time.time(), 3), "event": event, **fields}), flush=True)


class TestbedController(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]  # noqa: RUF012 - os-ken reads this class attribute

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        path = os.environ[TOPOLOGY_ENV]
        with open(path) as f:
            topo = json.load(f)
        self.hosts = topo["hosts"]                   # port name -> {"name", "mac", "ip", "index"}
        self.out_dir = os.path.dirname(os.path.abspath(path))
        self.datapaths = {}
        self.port_names = {}                         # (dpid, port_no) -> name
        self.installed = set()                       # (dpid, port name)
        self.host_ports = {}                         # (dpid, port name) -> port number
        self.packet_ins = 0
        self.flows = []
        self.ports = {}
        self.monitor = hub.spawn(self._monitor)

    # ------------------------------------------------------------------ flows

    def _add_flow(self, dp, priority, match, actions, cookie):
        parser, ofp = dp.ofproto_parser, dp.ofproto
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
        dp.send_msg(parser.OFPFlowMod(datapath=dp, cookie=cookie, priority=priority, match=match, instructions=inst))

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features(self, ev):
        dp = ev.msg.datapath
        parser, ofp = dp.ofproto_parser, dp.ofproto
        self.datapaths[dp.id] = dp
        # start from an empty table: whatever a previous controller left is not ours
        dp.send_msg(parser.OFPFlowMod(datapath=dp, command=ofp.OFPFC_DELETE, table_id=ofp.OFPTT_ALL,
                                      out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=parser.OFPMatch()))
        self._add_flow(dp, 0, parser.OFPMatch(),
                       [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)], COOKIE_BASE)
        self._add_flow(dp, 10, parser.OFPMatch(eth_dst="ff:ff:ff:ff:ff:ff"),
                       [parser.OFPActionOutput(ofp.OFPP_FLOOD)], COOKIE_BASE + 1)
        self.installed = {k for k in self.installed if k[0] != dp.id}
        self.host_ports = {k: v for k, v in self.host_ports.items() if k[0] != dp.id}
        dp.send_msg(parser.OFPPortDescStatsRequest(dp, 0))
        _log("switch-connected", dpid=dp.id)

    def _install_host(self, dp, name, port_no):
        if name not in self.hosts or (dp.id, name) in self.installed:
            return
        h = self.hosts[name]
        parser = dp.ofproto_parser
        cookie = COOKIE_HOST + int(h["index"])
        out = [parser.OFPActionOutput(port_no)]
        self._add_flow(dp, 200, parser.OFPMatch(eth_type=0x0806, arp_tpa=h["ip"]), out, cookie)
        self._add_flow(dp, 90, parser.OFPMatch(eth_dst=h["mac"]), out, cookie)
        self.installed.add((dp.id, name))
        self.host_ports[(dp.id, name)] = port_no
        # one flow per (source port, destination host): its counters are the traffic matrix
        for other, other_port in [(n, p) for (d, n), p in self.host_ports.items() if d == dp.id and n != name]:
            for src, src_port, dst, dst_port in ((name, port_no, other, other_port), (other, other_port, name, port_no)):
                pair_cookie = COOKIE_PAIR + (int(self.hosts[src]["index"]) << 8) + int(self.hosts[dst]["index"])
                self._add_flow(dp, 100, parser.OFPMatch(in_port=src_port, eth_dst=self.hosts[dst]["mac"]),
                               [parser.OFPActionOutput(dst_port)], pair_cookie)
        _log("host-flows", host=h["name"], port=name, port_no=port_no, mac=h["mac"], ip=h["ip"])

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def port_desc(self, ev):
        dp = ev.msg.datapath
        for p in ev.msg.body:
            name = p.name.decode() if isinstance(p.name, bytes) else p.name
            self.port_names[(dp.id, p.port_no)] = name
            self._install_host(dp, name, p.port_no)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def port_status(self, ev):
        msg = ev.msg
        dp, p, ofp = msg.datapath, msg.desc, msg.datapath.ofproto
        name = p.name.decode() if isinstance(p.name, bytes) else p.name
        self.port_names[(dp.id, p.port_no)] = name
        if msg.reason == ofp.OFPPR_DELETE:
            self.installed.discard((dp.id, name))
            self.host_ports.pop((dp.id, name), None)
            _log("port-deleted", port=name)
            return
        self._install_host(dp, name, p.port_no)
        down = bool(p.state & ofp.OFPPS_LINK_DOWN)
        host = self.hosts.get(name, {}).get("name", name)
        _log("link-down" if down else "link-up", host=host, port=name)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in(self, ev):
        self.packet_ins += 1
        if self.packet_ins <= 20:
            data = ev.msg.data
            _log("packet-in", in_port=ev.msg.match.get("in_port"), dst=data[0:6].hex(":"), src=data[6:12].hex(":"),
                 ethertype=data[12:14].hex())

    # ------------------------------------------------------------------ statistics over OpenFlow

    def _monitor(self):
        while True:
            for dp in list(self.datapaths.values()):
                parser, ofp = dp.ofproto_parser, dp.ofproto
                dp.send_msg(parser.OFPFlowStatsRequest(dp))
                dp.send_msg(parser.OFPPortStatsRequest(dp, 0, ofp.OFPP_ANY))
            hub.sleep(1)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def flow_stats(self, ev):
        flows = []
        for s in ev.msg.body:
            match = {k: v for k, v in s.match.items()}
            actions = []
            for inst in s.instructions:
                for a in getattr(inst, "actions", []):
                    port = getattr(a, "port", None)
                    actions.append(f"output:{port}" if port is not None else type(a).__name__)
            flows.append({"table": s.table_id, "priority": s.priority, "cookie": hex(s.cookie), "match": match,
                          "actions": actions, "packets": s.packet_count, "bytes": s.byte_count})
        flows.sort(key=lambda f: (-f["priority"], json.dumps(f["match"], sort_keys=True)))
        _write_json(os.path.join(self.out_dir, "flows.json"),
                    {"t": time.time(), "dpid": ev.msg.datapath.id, "packet_ins": self.packet_ins, "flows": flows})

    @set_ev_cls(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def port_stats(self, ev):
        dpid = ev.msg.datapath.id
        ports = {}
        for s in ev.msg.body:
            name = self.port_names.get((dpid, s.port_no), str(s.port_no))
            ports[name] = {"port_no": s.port_no, "rx_bytes": s.rx_bytes, "tx_bytes": s.tx_bytes,
                           "rx_packets": s.rx_packets, "tx_packets": s.tx_packets, "rx_dropped": s.rx_dropped,
                           "tx_dropped": s.tx_dropped}
        _write_json(os.path.join(self.out_dir, "ports.json"), {"t": time.time(), "dpid": dpid, "ports": ports})


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    os.environ[TOPOLOGY_ENV] = os.path.abspath(argv[1])
    cfg.CONF(args=["--ofp-listen-host", "127.0.0.1", "--ofp-tcp-listen-port", argv[2]], project="os_ken")
    _log("controller-starting", port=int(argv[2]), pid=os.getpid())
    app_manager.AppManager.run_apps([__name__])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
