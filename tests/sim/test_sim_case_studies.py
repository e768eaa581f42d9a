"""The reduced (CI) case studies, run for real once per session, with sanity bounds.

The full run is `python -m coopml.sim.case_studies --out DIR --full` (see docs/fusion.md).
"""

import json

import pytest

from coopml.models import build_model
from coopml.sim.case_studies import CaseStudyConfig, main, run_all
from coopml.sim.report import write_report


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    cfg = CaseStudyConfig.reduced()
    out = tmp_path_factory.mktemp("report")
    results = run_all(cfg, out / "checkpoints")
    write_report(out, results)
    return results, out


def test_a_rerun_resumes_after_the_finished_studies(reduced, tmp_path, monkeypatch):
    """A full run takes hours: each finished study is saved as it ends and a rerun under the same
    config reuses it -- word for word the same result, no study run again; a study that fails
    leaves the ones before it on disk; an unreadable or foreign-config checkpoint is recomputed."""
    from coopml.sim import case_studies as cs

    results, out = reduced
    cfg = results.config
    saved = out / "checkpoints"
    assert sorted(p.name for p in saved.iterdir()) == ["cs1.json", "cs2.json", "cs3.json", "cs4.json"]
    calls: list[str] = []

    def fake(name, value):
        def run(*_args):
            calls.append(name)
            if value is None:
                raise RuntimeError(f"{name} crashed")
            return value
        return run

    for name, value in (("1", results.cs1), ("2", results.cs2), ("3", results.cs3), ("4", results.cs4)):
        monkeypatch.setattr(cs, f"run_case_study_{name}", fake(f"cs{name}", value))
    logs: list[str] = []
    assert run_all(cfg, saved, logs.append) == results and calls == []        # all four from disk
    assert all("reusing" in line for line in logs) and len(logs) == 4
    assert not any("finished in" in line for line in logs)
    # a crash in Case Study III: I and II are on disk, the rerun runs only III and IV
    fresh = tmp_path / "checkpoints"
    monkeypatch.setattr(cs, "run_case_study_3", fake("cs3", None))
    with pytest.raises(RuntimeError, match="cs3 crashed"):
        run_all(cfg, fresh, logs.append)
    assert sorted(p.name for p in fresh.iterdir()) == ["cs1.json", "cs2.json"] and calls == ["cs1", "cs2", "cs3"]
    monkeypatch.setattr(cs, "run_case_study_3", fake("cs3", results.cs3))
    calls.clear()
    assert run_all(cfg, fresh, logs.append) == results and calls == ["cs3", "cs4"]
    # garbage in one checkpoint, a checkpoint of another study under its name: both recomputed
    (fresh / "cs2.json").write_text("{not json")
    (fresh / "cs4.json").write_bytes((fresh / "cs1.json").read_bytes())
    calls.clear()
    logs.clear()
    assert run_all(cfg, fresh, logs.append) == results and calls == ["cs2", "cs4"]
    assert sum("ignoring unreadable checkpoint" in line for line in logs) == 2
    assert [line.split(":")[0] for line in logs if "finished in" in line] == ["cs2", "cs4"]
    # another seed: nothing reused
    calls.clear()
    logs.clear()
    other = cfg.model_copy(update={"seed": cfg.seed + 1})
    run_all(other, fresh, logs.append)
    assert calls == ["cs1", "cs2", "cs3", "cs4"] and sum("another config" in line for line in logs) == 4
    # other code (any source file of the package changed): nothing reused either
    calls.clear()
    logs.clear()
    monkeypatch.setattr(cs, "code_digest", lambda: "0" * 64)
    assert run_all(other, fresh, logs.append).cs3 == results.cs3 and calls == ["cs1", "cs2", "cs3", "cs4"]
    assert sum("other code" in line for line in logs) == 4


def test_a_checkpoint_keeps_nan(tmp_path):
    """A scenario where no model was accepted has accuracy NaN; JSON's default (null) would not
    load back as a float, and the hours-long study would run again on every rerun."""
    from pydantic import BaseModel

    from coopml.sim import case_studies as cs

    class Scores(BaseModel):
        accuracy: float
        curve: list[float]

    calls: list[int] = []

    def run():
        calls.append(1)
        return Scores(accuracy=float("nan"), curve=[0.5, float("inf")])

    cfg = CaseStudyConfig.reduced()
    for _ in range(2):
        got = cs._checkpointed(tmp_path, "cs3", cfg, Scores, run, print)
        assert got.curve == [0.5, float("inf")] and got.accuracy != got.accuracy     # NaN
    assert calls == [1]


def test_report_files(reduced):
    _results, out = reduced
    for name in ("report.md", "fig10.png", "fig11.png", "fig12.png", "fig_cs4.png", "results.json"):
        assert (out / name).stat().st_size > 500, name
    assert (out / "fig11.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    for heading in ("Case Study I", "Case Study II", "Case Study III", "Case Study IV", "late fusion",
                    "initiator data only", "ReLU as random dropout"):
        assert heading in md
    assert json.loads((out / "results.json").read_text())["cs2"]["paper_original"] == [91.5, 94.8, 95.8]


def test_case_study_1_sanity(reduced):
    cs = reduced[0].cs1
    assert [c.labels for c in cs.contributors] == [[0, 1, 2, 3, 4], [0, 6, 7, 8, 9], [5, 6, 7, 8, 9]]
    assert all(c.local_accuracy > 0.7 for c in cs.contributors)
    assert all(c.test_all_accuracy < 0.6 for c in cs.contributors)      # each knows half the labels
    for method in ("strategy I", "strategy II"):
        accs = cs.fused[method]
        assert len(accs) == 3 and accs[2] > accs[0] + 0.05 and accs[2] > 0.8, (method, accs)
        assert accs[2] > cs.fused["late fusion"][2]
        assert accs[2] > cs.initiator_only


def test_case_study_2_sanity(reduced):
    cs = reduced[0].cs2
    assert all(len(c.labels) == 7 and c.arch == "table4" for c in cs.contributors)
    accs = cs.fused["strategy II"]
    assert accs[2] > 0.8 and accs[2] >= accs[0], accs
    assert accs[2] > cs.initiator_only
    # the initiator's own nonlinear CNN as a fixed member: the contributors' models must still add
    # to it (else buying them would be pointless), and it must lift the linear members' MetaModel
    with_own = cs.fused["strategy II + initiator's table1-c1"]
    assert cs.initiator_member_alone is not None and len(with_own) == 3
    assert max(with_own) > cs.initiator_member_alone + 0.01, (with_own, cs.initiator_member_alone)
    assert with_own[2] > accs[2] - 0.01, (with_own, accs)


def test_case_study_3_sanity(reduced):
    results = reduced[0]
    cs, cfg = results.cs3, results.config
    assert [s.name for s in cs.scenarios] == ["diverse non-identical", "partial labels (Table II)"]
    assert cs.recipe == cfg.cs3_recipe
    for s in cs.scenarios:
        assert s.fedavg_bytes == cfg.fedavg_rounds * 4 * 2 * cs.model_bytes
        assert sum(p.sent + p.received for p in s.fedavg_parties if p.party != "server") == s.fedavg_bytes
        assert [v.precision for v in s.ours] == cfg.cs3_precisions
        fp32 = s.ours[0]
        # three verifier fetches (body + head), the initiator fetches accepted bodies only, each pulled from
        # the contributor's own node (cs3_storage="own-node"); a shared storage node adds the three uploads
        body = sum(v.numel() * 4 for k, v in build_model(cfg.fedavg_arch).state_dict().items() if k.startswith("body."))
        assert cfg.cs3_storage == "own-node" and fp32.storage == "own-node"
        assert 3 * cs.model_bytes < fp32.bytes_total == fp32.bytes_own_node < 6 * cs.model_bytes
        assert abs(fp32.bytes_shared_node - fp32.bytes_own_node - 3 * cs.model_bytes) < 3 * 1024   # 3 uploads
        assert {p.party for p in fp32.parties} >= {"contributor1", "verifier", "initiator"}
        initiator = next(p for p in fp32.parties if p.party == "initiator")
        assert initiator.received >= len(fp32.verified) * body
        readers = sum(p.received for p in fp32.parties)
        assert fp32.bytes_total == readers == sum(p.sent for p in fp32.parties)      # each crossing once
        int8 = next(v for v in s.ours if v.precision == "int8")
        assert int8.bytes_total < 0.3 * fp32.bytes_total                 # int8 weights: a quarter, plus scales
        assert s.ours_bytes == int8.bytes_total and s.ours_bytes < s.fedavg_bytes
        assert 0.5 < s.fedavg_accuracy <= 1 and len(s.fedavg_round_accuracy) == cfg.fedavg_rounds
        assert [f.precision for f in s.fedavg] == ["fp32"] and s.fedavg[0].bytes_total == s.fedavg_bytes
        assert s.ours_verified and 0.5 < s.ours_accuracy <= 1


def test_case_study_4_sanity(reduced):
    """Reduced Case Study IV (10 % of the windows): real training, real encryption both ways."""
    cs = reduced[0].cs4
    cfg = cs.config
    assert cs.train_windows == 1000 and cs.test_windows == 100 and cs.class_balance == 0.5
    assert [(r.arch, r.contributor) for r in cs.table6] == [
        (a, f"contributor{i}") for a in cfg.archs for i in (1, 2, 3)]
    for r in cs.table6:
        # p = 2^7 rounding moves a few windows at most; the verifier path equals the integer network
        # (asserted bit for bit inside the run) and so agrees with the decrypted model closely
        assert abs(r.decrypted - r.original) <= 0.08, r
        assert abs(r.encrypted_inference - r.decrypted) <= 0.03, r
        assert (r.relu_as_dropout is not None) == (r.arch == "fading-cnn")
    assert max(r.original for r in cs.table6) > 0.65          # something was learnt on 900 windows
    assert len(cs.table7) == 3 * len(cfg.archs)
    for r7 in cs.table7:
        assert abs(r7.encrypted - r7.original) <= 0.12, r7
    assert [(r.arch, r.strategy) for r in cs.table8] == [
        (a, s) for a in cfg.archs for s in ("element-wise", "matrix-pair-wise")]
    for r8 in cs.table8:
        assert r8.samples == cfg.timing_samples and r8.encrypted[1] > 0 and r8.plain[1] > 0


def test_cli_entry_point_rejects_missing_out(capsys):
    with pytest.raises(SystemExit):
        main([])
    assert "--out" in capsys.readouterr().err


def test_case_study_3_tuned_recipe_reaches_both_paradigms(monkeypatch):
    """`cs3_recipe="tuned"` (a tiny real run): every contributor trains augmented, with doubled
    patience and a refit on both halves, and FedAvg's clients get the same -- augmented images,
    both halves of their shards -- so neither paradigm gets a trick the other lacks."""
    from coopml.fusion import FusionConfig
    from coopml.sim import case_studies as cs

    fed_calls, train_cfgs = [], []
    real_fedavg, real_train = cs.run_fedavg, cs.train_model

    def spy_fedavg(arch, clients, *args, **kwargs):
        fed_calls.append(([len(c) for c in clients], kwargs.get("augment")))
        return real_fedavg(arch, clients, *args, **kwargs)

    def spy_train(model, train, val, tc, **kwargs):
        train_cfgs.append(tc)
        return real_train(model, train, val, tc, **kwargs)

    monkeypatch.setattr(cs, "run_fedavg", spy_fedavg)
    monkeypatch.setattr(cs, "train_model", spy_train)
    cfg = CaseStudyConfig.reduced().model_copy(update={
        "scale": 0.02, "test_samples": 200, "contributor_epochs": 2, "verify_threshold": 0.0, "fedavg_rounds": 1,
        "fedavg_local_epochs": 1, "cs3_precisions": ["fp32"], "transport_precision": "fp32",
        "fusion": FusionConfig.tuned(augment_copies=1, max_epochs=2, patience=1), "cs3_recipe": "tuned"})
    res = cs.run_case_study_3(cfg)
    assert res.recipe == "tuned" and len(res.scenarios) == 2
    assert fed_calls[0] == ([2 * 20] * 4, True)                      # diverse: 20 + 20 images per party
    assert all(augment for _, augment in fed_calls)
    assert len(train_cfgs) == 6 and all(tc.augment and tc.refit_on_all and tc.patience == 2 * cfg.contributor_patience
                                        for tc in train_cfgs)
