"""What `coopml predict` reads: unlabelled samples from an image folder, an .npz or a CSV/Parquet file,
checked against the task's InputSpec like any dataset file."""

from __future__ import annotations

import numpy as np
import pytest

from coopml.data import InputSpec
from coopml.data.files import load_samples
from coopml.errors import DataError

TAB = InputSpec(shape=(3,), dtype="float32", classes=("a", "b"), feature_names=("x1", "x2", "x3"))
IMG = InputSpec(shape=(1, 4, 4), dtype="uint8", classes=("a", "b"))


def test_csv_columns_by_name_and_label_column_left_out(tmp_path):
    f = tmp_path / "rows.csv"
    f.write_text("x3,label,x1,x2\n3,a,1,2\n6,b,4,5\n")
    x, names = load_samples(f, TAB, label_column="label")
    assert x.dtype == np.float32 and x.tolist() == [[1, 2, 3], [4, 5, 6]] and names == ["row 1", "row 2"]
    x2, _ = load_samples(f, TAB)                   # columns the spec does not name (an id, a label) are ignored
    assert x2.tolist() == x.tolist()
    unnamed = InputSpec(shape=(3,), dtype="float32", classes=("a", "b"))
    with pytest.raises(DataError, match="feature columns"):
        load_samples(f, unnamed)                   # without names, every column but the label is a feature
    assert load_samples(f, unnamed, label_column="label")[0].tolist() == [[3, 1, 2], [6, 4, 5]]
    f.write_text("x1,x2,x3\n1,oops,3\n")
    with pytest.raises(DataError, match="not numeric"):
        load_samples(f, TAB)


def test_npz_needs_x_of_the_spec_shape(tmp_path):
    f = tmp_path / "s.npz"
    np.savez(f, x=np.ones((5, 3), np.float32))
    x, names = load_samples(f, TAB)
    assert x.shape == (5, 3) and names[0] == "x[0]"
    np.savez(f, x=np.ones((5, 4), np.float32))
    with pytest.raises(DataError, match="does not match"):
        load_samples(f, TAB)
    np.savez(f, y=np.ones(3))
    with pytest.raises(DataError, match="no array 'x'"):
        load_samples(f, TAB)


def test_image_folder_any_layout(tmp_path):
    from PIL import Image
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "imgs" / "one.png")
    Image.fromarray(np.full((4, 4), 9, np.uint8)).save(tmp_path / "imgs" / "sub" / "two.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    x, names = load_samples(tmp_path / "imgs", IMG)
    assert x.shape == (2, 1, 4, 4) and names == ["one.png", "sub/two.png"] and int(x[1].max()) == 9
    with pytest.raises(DataError, match="tabular"):
        load_samples(tmp_path / "imgs", TAB)
    with pytest.raises(DataError, match="cannot tell the format"):
        load_samples(tmp_path / "imgs" / "notes.txt", TAB)


def test_a_process_that_read_through_arrow_leaves_without_cxx_static_destructors(monkeypatch, capsys):
    """apache/arrow#34314: Arrow's thread pools, torn down by C++ static destructors at exit, can
    abort a finished `coopml predict` with SIGABRT. The CLI's exit runs Python's exit handlers,
    flushes, and ends with os._exit and the command's status."""
    import subprocess
    import sys

    import pyarrow  # noqa: F401 - loaded, as after reading a CSV

    from coopml.cli import main as cli

    class Left(Exception):
        pass

    ran: list[bool] = []
    exits: list[int] = []

    def fake_exit(status: int) -> None:
        exits.append(status)
        raise Left

    monkeypatch.setattr(cli.atexit, "_run_exitfuncs", lambda: ran.append(True))
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    for code in (None, 0, 2, "a message"):
        with pytest.raises(Left):
            cli.leave(code)
    assert exits == [0, 0, 2, 1] and len(ran) == 4
    assert "a message" in capsys.readouterr().err
    # in a real process: the status, the buffered output and the exit handlers all survive
    script = ("import atexit, pyarrow; atexit.register(print, 'handler ran'); "
              "from coopml.cli.main import leave; print('output', end=' '); leave(3)")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 3 and r.stdout.split() == ["output", "handler", "ran"], (r.returncode, r.stdout, r.stderr)
