import subprocess
import sys

from typer.testing import CliRunner

from coopml.cli.main import app
from coopml.models import load_model

runner = CliRunner()


def test_train_writes_loadable_model(tmp_path):
    out = tmp_path / "m.safetensors"
    r = runner.invoke(app, ["train", "--arch", "table4", "--labels", "3,1", "--n-train", "100", "--n-val", "100",
                            "--epochs", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "trained table4 on [1, 3]" in r.output
    _model, manifest = load_model(out)
    assert manifest.labels == [1, 3]


def test_bad_arguments_give_message_not_traceback():
    r = runner.invoke(app, ["train", "--labels", "1,x"])
    assert r.exit_code == 2 and "comma-separated digits" in r.output
    r = runner.invoke(app, ["train", "--arch", "nope", "--epochs", "1", "--n-train", "20", "--n-val", "20"])
    assert r.exit_code == 2 and "unknown architecture 'nope'" in r.output
    assert "Traceback" not in r.output


def test_contributors_entry_point_runs_real_training():
    # Through the installed console script, as a user runs it.
    r = subprocess.run([sys.executable, "-m", "coopml.cli.main", "contributors", "--epochs", "1", "--scale", "0.1"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert "contributor3" in r.stdout and "table1-c3" in r.stdout


def test_demo_refuses_an_unknown_own_model_before_starting_anything(tmp_path):
    r = runner.invoke(app, ["demo", "--own-model", "no-such-arch", "--out", str(tmp_path / "demo")])
    text = " ".join(r.output.replace("│", " ").split())          # the error panel wraps its lines
    assert r.exit_code == 2 and "'no-such-arch' is not a registered architecture" in text, r.output
    assert not (tmp_path / "demo").exists()
