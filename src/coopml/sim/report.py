"""Markdown + PNG report of the case studies (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from coopml.sim.case_studies import PAPER_TABLE_V_ORIGINAL, CaseStudiesResult

SUBSETS = ("{1}", "{1,2}", "{1,2,3}")


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def _fig10(res: CaseStudiesResult, path: Path) -> None:
    rows = res.cs1.contributors
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bars = ax.bar([f"C{i + 1}\n{r.labels}" for i, r in enumerate(rows)], [100 * r.local_accuracy for r in rows],
                  color=["tab:blue", "tab:orange", "tab:green"])
    ax.bar_label(bars, fmt="%.1f")
    ax.axhline(100 * res.config.verify_threshold, ls="--", c="grey", lw=1, label="criterion")
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy on local verification data (%)")
    ax.set_title("Case Study I: computing contributors (cf. Fig. 10)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fig11(res: CaseStudiesResult, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, cs, title in ((axes[0], res.cs1, "Case Study I (Table I CNNs, Table II split)"),
                          (axes[1], res.cs2, "Case Study II (Table IV models, Table III split)")):
        for method, accs in cs.fused.items():
            ax.plot(SUBSETS[:len(accs)], [100 * a for a in accs], marker="o", label=method)
        ax.axhline(100 * cs.initiator_only, ls=":", c="k", lw=1, label="initiator data only")
        ax.axhline(100 * cs.initiator_only_tuned, ls="-.", c="k", lw=1, label="initiator data only, tuned")
        if cs is res.cs2:
            ax.plot(SUBSETS, PAPER_TABLE_V_ORIGINAL, ls="--", marker="x", c="grey", label="paper Table V")
        ax.set_xlabel("fused private models")
        ax.set_ylabel("MetaModel test accuracy (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fig12(res: CaseStudiesResult, path: Path) -> None:
    sc = res.cs3.scenarios
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = range(len(sc))
    w = 0.38
    for ax, key_ours, key_fed, ylabel, scale in (
            (axes[0], "ours_accuracy", "fedavg_accuracy", "test accuracy (%)", 100.0),
            (axes[1], "ours_bytes", "fedavg_bytes", "bytes communicated (MiB)", 1 / 2**20)):
        b1 = ax.bar([i - w / 2 for i in x], [getattr(s, key_ours) * scale for s in sc], w, label="our paradigm")
        b2 = ax.bar([i + w / 2 for i in x], [getattr(s, key_fed) * scale for s in sc], w, label="FedAvg")
        ax.bar_label(b1, fmt="%.1f", fontsize=8)
        ax.bar_label(b2, fmt="%.1f", fontsize=8)
        ax.set_xticks(list(x), [s.name for s in sc], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0].set_ylim(0, 105)
    fig.suptitle("Case Study III: our paradigm vs federated averaging (cf. Fig. 12)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fused_table(cs, paper: tuple[float, ...] | None = None) -> list[str]:
    head = "| method | " + " | ".join(SUBSETS) + " |"
    lines = [head, "|---" * 4 + "|"]
    for method, accs in cs.fused.items():
        lines.append(f"| {method} | " + " | ".join(_pct(a) for a in accs) + " |")
    lines.append("| initiator data only (no fusion) | " + " | ".join([_pct(cs.initiator_only)] * 3) + " |")
    lines.append("| initiator data only, tuned (augmented, refit on train + verification) | "
                 + " | ".join([_pct(cs.initiator_only_tuned)] * 3) + " |")
    if paper:
        lines.append("| paper, Table V 'Original' (strategy II) | " + " | ".join(f"{p:.1f}" for p in paper) + " |")
    return lines


def _contributor_table(rows) -> list[str]:
    lines = ["| contributor | arch | labels | epochs | local verification (own labels) | test, own labels | test, all 10 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.arch} | {r.labels} | {r.epochs} | {_pct(r.local_accuracy)} | "
                     f"{_pct(r.test_own_accuracy)} | {_pct(r.test_all_accuracy)} |")
    return lines


def write_report(out_dir: str | Path, results: CaseStudiesResult) -> Path:
    """Write report.md, fig10.png, fig11.png, fig12.png and results.json into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _fig10(results, out / "fig10.png")
    _fig11(results, out / "fig11.png")
    _fig12(results, out / "fig12.png")
    (out / "results.json").write_text(results.model_dump_json(indent=2))
    cfg = results.config
    test_n = "10,000 (full MNIST test set)" if cfg.test_samples is None else f"first {cfg.test_samples} MNIST test images"
    fc = cfg.fusion
    md = [
        f"# coopml case studies ({cfg.preset} preset, seed {cfg.seed})", "",
        f"Accuracies in % on the {test_n}. Shards are drawn from the MNIST training set at scale {cfg.scale} "
        f"(1.0 = the paper's 1000 train + 1000 verification images per party). Contributors: Adam, "
        f"lr {cfg.contributor_lr}, batch 50, up to {cfg.contributor_epochs} epochs, early stopping "
        f"(patience {cfg.contributor_patience}) on their own verification data.", "",
        f"MetaModel fusion: trained on the initiator's train shard, early-stopped on its verification shard; "
        f"lr {fc.lr}, batch {fc.batch_size}, up to {fc.max_epochs} epochs per stage (patience {fc.patience}), "
        f"feature z-scoring {'on' if fc.normalize else 'off'}, feature activation {fc.feature_activation}, "
        f"hidden activation {fc.hidden_activation}, {fc.augment_copies} augmented copies of the initiator's "
        f"images (random shift/rotation/scale), feature dropout {fc.feature_dropout}"
        + (". Then retrained from the same start on train + verification shards for the epochs early "
           "stopping chose (`refit_on_all`). " if fc.refit_on_all else ". ")
        + "'Late fusion' averages each member's softmax over its own labels (no training). "
        "'Initiator data only' trains the same architecture on the initiator's shard alone, like a "
        "contributor; its 'tuned' variant also gets per-image random affine augmentation, twice the "
        "patience and the final refit on train + verification shards, i.e. the same advantages the "
        "fusion preset has.", "",
        "## Case Study I (Table I CNNs, Table II split)", "",
        "![contributors](fig10.png)", "",
        *_contributor_table(results.cs1.contributors), "",
        "![fusion](fig11.png)", "",
        *_fused_table(results.cs1), "",
        f"({results.cs1.seconds:.0f} s)", "",
        "## Case Study II (Table IV models, Table III split; Table V 'Original' column)", "",
        *_contributor_table(results.cs2.contributors), "",
        *_fused_table(results.cs2, PAPER_TABLE_V_ORIGINAL), "",
        f"({results.cs2.seconds:.0f} s)", "",
        "## Case Study III (our paradigm vs FedAvg)", "",
        "![fedavg](fig12.png)", "",
        f"FedAvg: 4 clients (the three contributors' and the initiator's train shards), {cfg.fedavg_rounds} rounds "
        f"x {cfg.fedavg_local_epochs} local epochs, all clients every round, weights averaged by sample count. "
        f"Ours: three contributors train once (up to {cfg.contributor_epochs} epochs), one verifier accepts a model "
        f"at >= {100 * cfg.verify_threshold:.0f} % on its own labels, the initiator fuses accepted models (strategy II). "
        f"Every party uses {cfg.fedavg_arch} ({_mib(results.cs3.model_bytes)} MiB as float32 safetensors).", "",
        "Bytes: FedAvg counts the global model sent to every client and every client's model sent back, each "
        "round. Ours counts each model uploaded once to storage and downloaded once by the verifier and once "
        "by the initiator; no data moves. On-chain transactions (hashes, votes: a few hundred bytes) are not "
        "counted in either.", "",
        "| scenario | ours: accuracy | ours: MiB | ours: verified | FedAvg: accuracy | FedAvg: MiB | FedAvg per round |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in results.cs3.scenarios:
        md.append(f"| {s.name} | {_pct(s.ours_accuracy)} | {_mib(s.ours_bytes)} | {', '.join(s.ours_verified) or '-'} | "
                  f"{_pct(s.fedavg_accuracy)} | {_mib(s.fedavg_bytes)} | "
                  f"{' / '.join(_pct(a) for a in s.fedavg_round_accuracy)} |")
    md += ["", (f"'Ours' above ships members as {cfg.transport_precision}. Every shipping precision measured "
                "(each time the verifier judges and the initiator fuses exactly the weights received; a model "
                "travels as two objects, body and head, and the initiator fetches only the bodies):"), "",
           "| scenario | shipped as | accuracy | MiB | ours / FedAvg bytes | verified |", "|---|---|---|---|---|---|"]
    for s in results.cs3.scenarios:
        for v in s.ours:
            md.append(f"| {s.name} | {v.precision} | {_pct(v.accuracy)} | {_mib(v.bytes_total)} | "
                      f"{v.bytes_total / s.fedavg_bytes:.3f}x | {', '.join(v.verified) or '-'} |")
    md += ["", "Bytes per party (MiB sent / received), 'ours' as above:", ""]
    for s in results.cs3.scenarios:
        rows = [(f"ours: {p.party}", p) for p in next((v.parties for v in s.ours
                                                       if v.precision == cfg.transport_precision), [])]
        rows += [(f"FedAvg: {p.party}", p) for p in s.fedavg_parties]
        md += [f"*{s.name}*", "", "| party | sent | received |", "|---|---|---|"]
        md += [f"| {name} | {_mib(p.sent)} | {_mib(p.received)} |" for name, p in rows]
        md.append("")
    md += [f"({results.cs3.seconds:.0f} s)", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
