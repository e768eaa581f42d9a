"""The initiator's incremental fusion: each bought model is queued and refit warm; the MetaModel file
is the fusion layer's self-describing one, carries the task manifest, resumes after a restart, and
is refused for another task."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from coopml.errors import ModelFileError
from coopml.fusion import load_metamodel, read_manifest
from coopml.models import TrainConfig, build_model
from coopml.roles.config import AccountRef, InitiatorConfig, ModelSource
from coopml.roles.fusing import OWN_MEMBER_KEY, InitiatorFusion, open_metamodel
from coopml.sim import slots
from coopml.task import TaskManifest, builtin_manifest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusing")
    own = slots.write_npz(slots.node_data("mnist", 0, 7, None, 400, 0), root / "own.npz")
    test = slots.write_npz(slots.test_images("mnist", 500), root / "test.npz")
    cfg = InitiatorConfig(chain="http://127.0.0.1:9", contract="0x" + "11" * 20, store=str(root / "store"),
                          workdir=root / "initiator", account=AccountRef(keystore=root / "ks.json"),
                          manifest="mnist-case-study-2", data=own, test_data=test, fusion_epochs=3, fusion_augment=0)
    return cfg, builtin_manifest("mnist-case-study-2")


class NaNMember:
    """A delivered model whose features are NaN: must be left out, not retried forever."""

    feature_dim = 4
    labels = (0, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x), 4), math.nan)


def test_incremental_refits_resume_and_task_check(setup):
    cfg, manifest = setup
    fusion = InitiatorFusion(cfg, manifest, cfg.workdir)
    fusion.add(5, build_model("table4", 0), [0, 1, 2, 3, 4])
    first = fusion.fit()
    assert first["members"] == [5] and first["warm_start"] is False and first["test_accuracy"] is not None
    assert fusion.path.stat().st_mode & 0o777 == 0o600        # bought models' plaintext weights: owner only
    fusion.add(7, build_model("table4", 1), [5, 6, 7, 8, 9])
    fusion.add(9, NaNMember(), [0, 1])                  # type: ignore[arg-type]
    second = fusion.fit()
    assert second["members"] == [5, 7] and second["warm_start"] is True
    assert list(second["rejected"]) == ["9"] and "NaN" in second["rejected"]["9"]

    # the file stands alone: members keyed by model id, label sets, the task manifest verbatim
    path = fusion.path
    m = read_manifest(path.read_bytes())
    assert [(e.key, e.labels) for e in m.members] == [("model-5", [0, 1, 2, 3, 4]), ("model-7", [5, 6, 7, 8, 9])]
    assert TaskManifest.from_bytes(m.task_manifest.encode()) == manifest
    meta = open_metamodel(path, manifest)
    x, _ = fusion.test.tensors()
    assert torch.equal(meta.predict(x[:200]), fusion.fuser.current.predict(x[:200]))

    # a restarted initiator resumes from the file: nothing to refit
    again = InitiatorFusion(cfg, manifest, cfg.workdir)
    assert again.resumed_from == str(path) and again.known(5) and again.known(7) and not again.known(9)
    same = again.fit()
    assert same["members"] == [5, 7] and "fit_seconds" not in same
    assert same["test_accuracy"] == pytest.approx(second["test_accuracy"])

    # another task's initiator neither resumes from it nor accepts it
    other = manifest.replace(name="another task")
    fresh = InitiatorFusion(cfg, other, cfg.workdir)
    assert fresh.resumed_from is None and "another task" in (fresh.resume_refused or "")
    with pytest.raises(ModelFileError, match="fused for another task"):
        open_metamodel(path, other)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelFileError, match="metamodel.safetensors"):
        load_metamodel(path)


def test_export_needs_only_the_metamodel_file(setup, tmp_path):
    """`coopml export` rebuilds from the MetaModel file alone: the config names an unreachable chain
    and an empty store, and no model key is kept; the ONNX graph predicts what the file does."""
    import json

    import numpy as np
    import onnx
    from typer.testing import CliRunner

    from coopml.cli.main import app
    from coopml.roles.export import ExportError, load_onnx_metamodel, rebuild_metamodel

    cfg, manifest = setup
    cfg = cfg.model_copy(update={"workdir": tmp_path / "initiator", "test_data": None})
    fusion = InitiatorFusion(cfg, manifest, cfg.workdir)
    fusion.add(3, build_model("table4", 0), [0, 1, 2, 3, 4])
    fusion.fit()
    config = tmp_path / "initiator.json"
    config.write_text(cfg.model_dump_json())
    runner = CliRunner()
    r = runner.invoke(app, ["export", "--config", str(config), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "MetaModel of 1 model(s) (3)" in r.output
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "out" / "metamodel.onnx")).metadata_props}
    assert json.loads(props["coopml.members"]) == [{"model_id": 3, "key": "model-3", "labels": [0, 1, 2, 3, 4],
                                                   "kind": "torch"}]
    sess, spec = load_onnx_metamodel(tmp_path / "out" / "metamodel.onnx")
    assert spec == manifest.input
    x = torch.rand(16, *spec.shape)
    want = load_metamodel(fusion.path).predict(x).numpy()
    assert np.array_equal(sess.run(["scores"], {"input": x.numpy()})[0].argmax(1), want)
    # a MetaModel file by itself, without any config
    r = runner.invoke(app, ["export", "--metamodel", str(tmp_path / "out" / "metamodel.safetensors"),
                            "--out", str(tmp_path / "again")])
    assert r.exit_code == 0 and (tmp_path / "again" / "metamodel.onnx").is_file(), r.output
    r = runner.invoke(app, ["export", "--out", str(tmp_path / "none")])
    assert r.exit_code == 2 and "--config" in r.output
    with pytest.raises(ExportError, match="no MetaModel yet"):
        rebuild_metamodel(tmp_path / "missing.safetensors")


def test_a_cancelled_refit_keeps_its_models_queued_and_one_refit_covers_the_batch(setup, tmp_path):
    """The initiator stops a running refit when another model is bought meanwhile: nothing of the
    cancelled fit is kept but the members' cached features, and the next fit covers both."""
    from coopml.fusion import FusionCancelled

    cfg, manifest = setup
    fusion = InitiatorFusion(cfg.model_copy(update={"workdir": tmp_path}), manifest, tmp_path)
    fusion.add(5, build_model("table4", 0), [0, 1, 2, 3, 4])
    calls = []

    def stop_during_the_fit() -> bool:     # let the features finish, stop in the fit's first epoch
        calls.append(1)
        return len(calls) > 3
    with pytest.raises(FusionCancelled):
        fusion.fit(stop_during_the_fit)
    assert fusion.known(5) and fusion.fused_ids() == set() and not fusion.path.exists()
    assert len(fusion.fuser.pending) == 1 and fusion.fuser.pending[0] in fusion.fuser.cache
    fusion.add(7, build_model("table4", 1), [5, 6, 7, 8, 9])
    both = fusion.fit()
    assert both["members"] == [5, 7] and both["warm_start"] is False and fusion.path.is_file()
    assert len(fusion.fuser.history) == 1


def test_the_test_report_uses_each_members_cached_features_and_matches_a_full_evaluation(setup, tmp_path):
    """The initiator's after-refit test report computes each member's test features once, through
    the fuser's cache (an affine member: one matrix product), and says what a full pass says."""
    from coopml.models import evaluate

    cfg, manifest = setup
    fusion = InitiatorFusion(cfg.model_copy(update={"workdir": tmp_path, "fusion_augment": 2}), manifest, tmp_path)
    fusion.add(5, build_model("table4", 0), [0, 1, 2, 3, 4])
    first = fusion.fit()
    member = fusion.fuser.current.members[0]
    assert next(e.affine for e in fusion.fuser.cache._entries if e.member is member) is not None
    assert first["test_accuracy"] == pytest.approx(evaluate(fusion.fuser.current, fusion.test), abs=2 / len(fusion.test))
    cached = fusion._test_features[id(member)]
    fusion.add(7, build_model("table4", 1), [5, 6, 7, 8, 9])
    second = fusion.fit()
    assert fusion._test_features[id(member)] is cached           # not computed again
    assert second["test_accuracy"] == pytest.approx(evaluate(fusion.fuser.current, fusion.test), abs=2 / len(fusion.test))


def test_the_initiators_own_model_is_trained_once_and_fused_as_a_member(setup, tmp_path):
    cfg, manifest = setup
    own_cfg = cfg.model_copy(update={"workdir": tmp_path / "initiator", "own_model": ModelSource(arch="table4"),
                                     "own_train": TrainConfig(max_epochs=2, patience=1, refit_on_all=True)})
    fusion = InitiatorFusion(own_cfg, manifest, own_cfg.workdir)
    assert fusion.own_model_seconds is not None
    assert fusion.fuser.current is None                  # it waits for the first bought model
    fusion.add(5, build_model("table4", 0), [0, 1, 2, 3, 4])
    first = fusion.fit()
    assert first["members"] == [5] and first["own_model"] is True and first["test_accuracy"] is not None
    m = read_manifest(fusion.path.read_bytes())
    assert [(e.key, e.labels) for e in m.members] == [(OWN_MEMBER_KEY, list(range(10))), ("model-5", [0, 1, 2, 3, 4])]

    # `coopml export` takes it like any member: the ONNX graph predicts what the file does
    from typer.testing import CliRunner

    from coopml.cli.main import app
    from coopml.roles.export import load_onnx_metamodel
    r = CliRunner().invoke(app, ["export", "--metamodel", str(fusion.path), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    sess, spec = load_onnx_metamodel(tmp_path / "out" / "metamodel.onnx")
    x = torch.rand(16, *spec.shape)
    want = load_metamodel(fusion.path).predict(x).numpy()
    assert (sess.run(["scores"], {"input": x.numpy()})[0].argmax(1) == want).all()

    # a node that is stopping does not finish training its own model first
    from coopml.models import TrainingCancelled
    with pytest.raises(TrainingCancelled):
        InitiatorFusion(own_cfg.model_copy(update={"workdir": tmp_path / "stopping"}), manifest,
                        tmp_path / "stopping", should_stop=lambda: True)

    # a restart resumes with it: not trained again, nothing to refit
    again = InitiatorFusion(own_cfg, manifest, own_cfg.workdir)
    assert again.resumed_from == str(fusion.path) and again.own_model_seconds is None
    assert "fit_seconds" not in again.fit()

    # the default recipe: augmented images only where the inputs are images, refit on all
    default = cfg.model_copy(update={"own_model": ModelSource(arch="table4")})
    assert default.own_train_config(is_image=True).augment and default.own_train_config(is_image=True).refit_on_all
    assert not default.own_train_config(is_image=False).augment
    with pytest.raises(ValidationError, match="own_model must be a registered `arch`"):
        InitiatorConfig.model_validate({**own_cfg.model_dump(), "own_model": {"onnx": str(tmp_path / "m.onnx")}})
    with pytest.raises(ValidationError, match="'no-such-arch' is not a registered architecture"):
        InitiatorConfig.model_validate({**own_cfg.model_dump(), "own_model": {"arch": "no-such-arch"}})
