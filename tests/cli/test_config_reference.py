"""docs/config-reference.md is generated from the pydantic models and must be committed up to date."""

from pathlib import Path

from typer.testing import CliRunner

from coopml.cli.main import app
from coopml.cli.reference import render
from coopml.roles.config import ContributorConfig, InitiatorConfig, VerifierConfig
from coopml.task import TaskManifest

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "config-reference.md"


def test_committed_reference_is_up_to_date():
    assert COMMITTED.read_text() == render(), "docs/config-reference.md is stale: run `coopml config-reference`"


def test_reference_lists_every_field_of_every_model():
    text = render()
    for model in (InitiatorConfig, ContributorConfig, VerifierConfig, TaskManifest):
        assert f"### {model.__name__}" in text
        for name in model.model_fields:
            assert f"| `{name}` |" in text, (model.__name__, name)
    for nested in ("AccountRef", "DatasetRef", "ModelSource", "TrainConfig", "SpendingLimits", "InputSpec",
                   "Criterion", "Verification", "Economics", "Windows"):
        assert f"### {nested}" in text, nested


def test_check_mode_detects_a_stale_file(tmp_path):
    runner = CliRunner()
    out = tmp_path / "ref.md"
    assert runner.invoke(app, ["config-reference", "--out", str(out)]).exit_code == 0
    assert runner.invoke(app, ["config-reference", "--out", str(out), "--check"]).exit_code == 0
    out.write_text(out.read_text().replace("| `chain` |", "| `chian` |"))
    assert runner.invoke(app, ["config-reference", "--out", str(out), "--check"]).exit_code == 1
