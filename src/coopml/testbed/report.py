"""report.json + report.md of a testbed run: links as measured, per-node traffic and phase
times of the coopml task, FedAvg on the same task and links, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def human(n: float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def _total(nodes: dict[str, Any]) -> tuple[int, int]:
    sel = list(nodes.values())
    return sum(v["sent_bytes"] for v in sel), sum(v["recv_bytes"] for v in sel)


INFRA_ROLES = ("chain", "operator")   # every other host runs an agent


def is_agent(role: str | None) -> bool:
    return role is not None and role not in INFRA_ROLES


def agent_to_agent(matrix: dict[str, Any] | None, roles: dict[str, str], among: set[str] | None = None) -> int | None:
    """Bytes that went from one agent host straight to another (models, keys, data: IPFS, FedAvg),
    optionally only among the hosts in `among`."""
    if matrix is None:
        return None
    def counts(h: str) -> bool:
        return is_agent(roles.get(h)) and (among is None or h in among)
    return sum(v["bytes"] for a, row in matrix.items() for b, v in row.items() if counts(a) and counts(b))


def comparison(report: dict[str, Any]) -> dict[str, Any] | None:
    """Totals for the Case Study III claim: communication and time, coopml task vs FedAvg."""
    fed, task = report.get("fedavg"), report["task"]
    if not fed:
        return None
    t_sent, _ = _total({k: v for k, v in task["nodes"].items() if is_agent(v["role"])})
    f_sent, _ = _total(fed["nodes"])
    chain_sent, chain_recv = _total({k: v for k, v in task["nodes"].items() if v["role"] == "chain"})
    hist = task["outcome"].get("fusion_history") or []
    roles = {name: h["role"] for name, h in report.get("hosts", {}).items()}
    return {"coopml_agent_to_agent_bytes": agent_to_agent(task.get("matrix"), roles),
            "fedavg_agent_to_agent_bytes": agent_to_agent(fed.get("matrix"), roles, set(fed["nodes"])),
            "coopml_bytes_sent_by_agents": t_sent, "coopml_chain_host_sent": chain_sent,
            "coopml_chain_host_received": chain_recv, "fedavg_bytes_sent": f_sent,
            "coopml_seconds": task["elapsed_s"], "fedavg_seconds": fed["elapsed_s"],
            "coopml_accuracy": hist[-1]["test_accuracy"] if hist else None,
            "fedavg_accuracy": fed["server"]["accuracy"], "model_bytes": fed["server"]["model_bytes"]}


def render_markdown(r: dict[str, Any]) -> str:
    p, sw = r["preset"], r["switch"]
    lines = [f"# coopml network testbed run {r['run_id']}", "",
             f"Preset **{p['name']}**: {p['description']}. Data: {r['data']}.", ""]
    if sw["kind"] == "ovs":
        lines.append(f"Switch: Open vSwitch bridge `{sw['bridge']}` (userspace datapath) under the os-ken controller.")
    else:
        lines.append(f"Switch: **Linux bridge fallback** `{sw['bridge']}` — {sw['fallback_reason']}.")
    lines.append("")
    links = r.get("links")
    if links:
        lines += ["## Links as measured", "",
                  "| path | rtt min / avg (ms) | one way (ms) | up (Mbit/s) | down (Mbit/s) | loss |",
                  "|---|---|---|---|---|---|",
                  (f"| {links['path']} | {links['rtt_min_ms']:.2f} / {links['rtt_avg_ms']:.2f} | "
                   f"{links['one_way_ms']:.2f} | {links['up_mbit']:.2f} | {links['down_mbit']:.2f} | "
                   f"{links['loss_pct']:g} % |"), ""]
    task = r["task"]
    out = task["outcome"]
    lines += ["## coopml task", "", (f"Task {out.get('task_id')} finished in {task['elapsed_s']:.1f} s "
                                     f"({out.get('block_number', '?')} blocks)."), "",
              "| model | contributor | outcome | approve | reject | abstain |", "|---|---|---|---|---|---|"]
    for m in out.get("models", []):
        lines.append(f"| {m['model_id']} | {m['contributor']} | {m['status']} | {m['approve']} | {m['reject']} | "
                     f"{m['abstain']} |")
    for h in out.get("fusion_history", []):
        if h.get("test_accuracy") is not None:
            lines.append(f"\nMetaModel with {len(h['members'])} model(s): {h['test_accuracy']:.2%} test accuracy.")
    lines += ["", "### Traffic per node (link counters; split by peer from the switch's per-pair flows)", "",
              "| node | role | sent | received | with chain (sent / recv) | with agents (sent / recv) | active (s) |",
              "|---|---|---|---|---|---|---|"]
    for name, n in task["nodes"].items():
        by = n.get("by_peer") or {}

        def pair(group: str, by: dict[str, Any] = by) -> str:
            g = by.get(group)
            return f"{human(g['sent_bytes'])} / {human(g['recv_bytes'])}" if g else "-"
        lines.append(f"| {name} | {n['role']} | {human(n['sent_bytes'])} | {human(n['recv_bytes'])} | "
                     f"{pair('chain')} | {pair('agents')} | "
                     f"{n['active_s'] if n['active_s'] is not None else '-'} |")
    matrix = task.get("matrix")
    if matrix:
        names = list(matrix)
        lines += ["", "### Traffic matrix of the task (bytes from row to column, OpenFlow flow counters)", "",
                  "| from \\ to | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for a in names:
            cells = [human(matrix[a][b]["bytes"]) if b != a else "" for b in names]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", "### Phases per node", "", "| node | phase | starts at (s) | takes (s) | sent | received |",
              "|---|---|---|---|---|---|"]
    for name, n in task["nodes"].items():
        for ph in n["phases"]:
            lines.append(f"| {name} | {ph['phase']} | {ph['start_s']:.1f} | {ph['seconds']:.1f} | "
                         f"{human(ph['sent_bytes'])} | {human(ph['recv_bytes'])} |")
    if task.get("cuts"):
        lines += ["", "### Link cuts", "", "| host | after | down at (s) | up at (s) |", "|---|---|---|---|"]
        for c in task["cuts"]:
            lines.append(f"| {c['host']} | {c['after_event']} | {c['down_at']} | {c['up_at']} |")
        lines.append(f"\nIPFS connections redialed after cuts: {task.get('ipfs_redials', 0)}.")
    fed = r.get("fedavg")
    if fed:
        s = fed["server"]
        lines += ["", "## FedAvg on the same task and links", "",
                  (f"{len(fed['job']['clients'])} clients, {fed['job']['rounds']} rounds x "
                   f"{fed['job']['local_epochs']} local epochs, model {human(s['model_bytes'])}; "
                   f"{fed['elapsed_s']:.1f} s; final accuracy {s['accuracy']:.2%}."), "",
                  "| round | accuracy | exchange (s) |", "|---|---|---|"]
        for rd in s["rounds"]:
            lines.append(f"| {rd['round']} | {rd['accuracy']:.2%} | {rd['exchange_s']:.2f} |")
        lines += ["", "| node | role | sent | received |", "|---|---|---|---|"]
        for name, n in fed["nodes"].items():
            lines.append(f"| {name} | {n['role']} | {human(n['sent_bytes'])} | {human(n['recv_bytes'])} |")
        c = comparison(r)
        if c:
            acc = f"{c['coopml_accuracy']:.2%}" if c["coopml_accuracy"] is not None else "-"
            lines += ["", "## Side by side (Case Study III on a network)", "",
                      "| | coopml task | FedAvg |", "|---|---|---|",
                      (f"| bytes sent by the participants | {human(c['coopml_bytes_sent_by_agents'])} | "
                       f"{human(c['fedavg_bytes_sent'])} |"),
                      (f"| of which agent to agent (models, keys, data) | {human(c['coopml_agent_to_agent_bytes'])} | "
                       f"{human(c['fedavg_agent_to_agent_bytes'])} |"),
                      f"| wall time (s) | {c['coopml_seconds']:.1f} | {c['fedavg_seconds']:.1f} |",
                      f"| test accuracy | {acc} (MetaModel) | {c['fedavg_accuracy']:.2%} |", "",
                      ("The coopml figure includes every chain RPC of the agents (the chain host sent "
                       f"{human(c['coopml_chain_host_sent'])} and received {human(c['coopml_chain_host_received'])}) "
                       "and the IPFS swarm's own traffic; FedAvg moves weights only.")]
    ctl = r.get("controller")
    if ctl and "flows" in ctl:
        lines += ["", "## Flow table (read by the controller over OpenFlow)", "",
                  f"Packet-ins (unexpected frames, dropped): {ctl.get('packet_ins', 0)}.", "",
                  "| priority | match | actions | packets | bytes |", "|---|---|---|---|---|"]
        for f in ctl["flows"]:
            match = ", ".join(f"{k}={v}" for k, v in f["match"].items()) or "*"
            lines.append(f"| {f['priority']} | {match} | {', '.join(f['actions'])} | {f['packets']} | {human(f['bytes'])} |")
    t = r.get("timings", {})
    if t:
        lines += ["", "Timings: " + ", ".join(f"{k} {v}" for k, v in t.items()) + "."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    report["comparison"] = comparison(report)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.md").write_text(render_markdown(report))
    return out / "report.md"
