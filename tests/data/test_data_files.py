"""Dataset files in the formats people have: every bad file gets a DataError naming it."""

import hashlib
import os
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError

from coopml.data import (
    DatasetRef,
    InputSpec,
    Normalize,
    Scale,
    content_digest,
    folder_listing,
)
from coopml.errors import DataError

GREY = InputSpec(shape=(1, 8, 8), dtype="uint8", classes=("cat", "dog", "bird"), preprocessing=(Scale(divide_by=255),))
RGB = GREY.model_copy(update={"shape": (3, 8, 8)})
TAB = InputSpec(shape=(3,), dtype="float32", classes=("healthy", "flu", "covid"))


def _png(path, size=(8, 8), mode="L", value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0]) + ((3,) if mode == "RGB" else ()), value, np.uint8)
    Image.fromarray(arr, mode).save(path)
    return path


def _folder(root):
    _png(root / "cat" / "c1.png", value=10)
    _png(root / "cat" / "sub" / "c2.jpg", value=20)
    _png(root / "dog" / "d1.PNG", mode="RGB", value=200)     # converted to grey
    (root / "dog" / ".DS_Store").write_bytes(b"junk")          # hidden: not part of the dataset
    return root


# -- image folder --------------------------------------------------------------------------------

def test_image_folder_loads_and_converts(tmp_path):
    root = _folder(tmp_path / "imgs")
    ds = DatasetRef.pin("image-folder", root).load(GREY)
    assert ds.images.shape == (3, 1, 8, 8) and ds.images.dtype == np.uint8
    assert ds.labels.tolist() == [0, 0, 1]                    # cat/c1, cat/sub/c2, dog/d1; no bird folder
    assert ds.images[0].max() == 10 and ds.images[2].max() == 200
    x, _ = ds.tensors()
    assert x.shape == (3, 1, 8, 8) and abs(float(x[2].max()) - 200 / 255) < 1e-6
    rgb = DatasetRef.pin("image-folder", root).load(RGB)
    assert rgb.images.shape == (3, 3, 8, 8) and (rgb.images[0] == 10).all()   # grey -> 3 equal channels


def test_folder_pin_is_the_sha256sum_of_the_sorted_listing(tmp_path):
    root = _folder(tmp_path / "imgs")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".DS" not in p.name)
    listing = "".join(f"{hashlib.sha256((root / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    assert folder_listing(root) == listing
    assert content_digest("image-folder", root) == hashlib.sha256(listing.encode()).hexdigest()
    shell = subprocess.run("find . -type f ! -path '*/.*' | sed 's|^\\./||' | LC_ALL=C sort | "
                           "xargs -d '\\n' sha256sum | sha256sum", shell=True, cwd=root, capture_output=True,
                           text=True, check=True)
    assert shell.stdout.split()[0] == content_digest("image-folder", root)   # what docs/formats.md promises


def test_image_folder_tampered_or_extended(tmp_path):
    root = _folder(tmp_path / "imgs")
    ref = DatasetRef.pin("image-folder", root)
    target = root / "cat" / "c1.png"
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{root}: sha256 .* does not match the pinned .*tampered"):
        ref.load(GREY)
    ref = DatasetRef.pin("image-folder", root)    # the corrupted image pinned as is: it cannot be decoded
    with pytest.raises(DataError, match=f"{target}: unreadable or corrupt image"):
        ref.load(GREY)
    target.unlink()
    ref = DatasetRef.pin("image-folder", root)
    _png(root / "dog" / "extra.png")
    with pytest.raises(DataError, match="does not match the pinned"):
        ref.load(GREY)


def test_corrupt_and_non_images(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(DataError, match=r"dog/broken.png: unreadable or corrupt image"):
        DatasetRef.pin("image-folder", root).load(GREY)
    (root / "dog" / "broken.png").unlink()
    (root / "dog" / "notes.txt").write_text("scanned 2024")
    with pytest.raises(DataError, match=r"dog/notes.txt: not an image file"):
        DatasetRef.pin("image-folder", root).load(GREY)


def test_truncated_image(tmp_path):
    root = _folder(tmp_path / "imgs")
    big = root / "dog" / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)).save(big)
    big.write_bytes(big.read_bytes()[:-30])
    with pytest.raises(DataError, match=r"big.png: unreadable or corrupt image"):
        DatasetRef.pin("image-folder", root).load(GREY)


@pytest.mark.parametrize("layout,msg", [
    (lambda r: _png(r / "horse" / "h.png"), r"imgs/horse: folder name 'horse' is not one of the classes \['cat', 'dog', 'bird'\]"),
    (lambda r: (r / "bird").mkdir(), r"imgs/bird: empty class folder"),
    (lambda r: _png(r / "top.png"), r"imgs/top.png: file at the top of the image folder"),
    (lambda r: _png(r / "dog" / "d2.png", size=(9, 8)), r"d2.png: image is 9x8 \(WxH\), the InputSpec needs 8x8"),
    (lambda r: Image.fromarray(np.zeros((8, 8), np.uint16)).save(r / "dog" / "d16.png"), r"d16.png: I;16 image"),
])
def test_image_folder_layout_errors(tmp_path, layout, msg):
    root = _folder(tmp_path / "imgs")
    layout(root)
    with pytest.raises(DataError, match=msg):
        DatasetRef.pin("image-folder", root).load(GREY)


def test_resize_only_without_distortion(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "cat" / "big.png", size=(16, 16), value=90)
    ds = DatasetRef.pin("image-folder", root, resize=True).load(GREY)
    assert ds.images.shape == (1, 1, 8, 8) and (ds.images == 90).all()
    _png(root / "dog" / "wide.png", size=(16, 8))
    with pytest.raises(DataError, match=r"wide.png: image is 16x8, resizing to 8x8 would change its aspect ratio"):
        DatasetRef.pin("image-folder", root, resize=True).load(GREY)


def test_image_folder_needs_an_image_spec_and_a_folder(tmp_path):
    root = _folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="needs an image InputSpec"):
        DatasetRef.pin("image-folder", root).load(TAB)
    with pytest.raises(DataError, match="no such folder"):
        DatasetRef(format="image-folder", path=tmp_path / "nope", sha256="0" * 64).load(GREY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders with images"):
        DatasetRef.pin("image-folder", tmp_path / "empty").load(GREY)


# -- npz -----------------------------------------------------------------------------------------

def _npz(path, **arrays):
    np.savez(path, **arrays)
    return DatasetRef.pin("npz", path)


def test_npz_ids_names_and_channel_axis(tmp_path):
    x = np.arange(3 * 64, dtype=np.uint8).reshape(3, 8, 8)
    ds = _npz(tmp_path / "a.npz", x=x, y=np.array([2, 0, 1])).load(GREY)
    assert ds.images.shape == (3, 1, 8, 8) and ds.labels.tolist() == [2, 0, 1]
    ds = _npz(tmp_path / "b.npz", x=x[:, None], y=np.array(["bird", "cat", "cat"])).load(GREY)
    assert ds.labels.tolist() == [2, 0, 0]
    ds = _npz(tmp_path / "c.npz", x=np.ones((2, 3), np.float64), y=np.array([0, 2])).load(TAB)
    assert ds.images.dtype == np.float32


@pytest.mark.parametrize("arrays,msg", [
    ({"x": np.zeros((3, 8, 7), np.uint8), "y": np.zeros(3, int)}, r"array 'x': shape \(3, 8, 7\) does not match .*\[N, 1, 8, 8\]"),
    ({"x": np.zeros((3, 8, 8), np.uint8), "y": np.array([0, 1, 3])}, r"label id 3 at y\[2\] is outside the classes 0..2"),
    ({"x": np.zeros((3, 8, 8), np.uint8), "y": np.array(["cat", "cow", "dog"])}, r"label 'cow' at y\[1\] is not one of the classes"),
    ({"x": np.zeros((3, 8, 8), np.uint8), "y": np.zeros(2, int)}, r"array 'y' has shape \(2,\), expected \(3,\)"),
    ({"x": np.zeros((3, 8, 8), np.uint8), "y": np.zeros(3)}, r"array 'y' has dtype float64"),
    ({"x": np.full((3, 8, 8), 0.5), "y": np.zeros(3, int)}, r"array 'x': non-integer value 0.5 at entry \[0, 0, 0, 0\]"),
    ({"x": np.full((3, 8, 8), 300), "y": np.zeros(3, int)}, r"array 'x': value 300 at entry \[0, 0, 0, 0\] is outside uint8's range"),
    ({"x": np.zeros((3, 8, 8), np.uint8)}, r"no array 'y'; it holds \['x'\]"),
    ({"x": np.zeros((0, 8, 8), np.uint8), "y": np.zeros(0, int)}, r"array 'x' holds no samples"),
    ({"x": np.array([[1, "a"]] * 3, dtype=object), "y": np.zeros(3, int)}, r"array 'x' cannot be read without pickle"),
])
def test_npz_errors_name_the_file(tmp_path, arrays, msg):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=f"{path}: {msg}" if "holds no" not in msg else msg):
        DatasetRef.pin("npz", path).load(GREY)


def test_npz_nan_inf_and_garbage(tmp_path):
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.inf
    path = tmp_path / "inf.npz"
    np.savez(path, x=x, y=np.zeros(4, int))
    with pytest.raises(DataError, match=rf"{path}: array 'x': NaN or infinity at entry \[2, 1\]"):
        DatasetRef.pin("npz", path).load(TAB)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=f"{garbage}: not a readable .npz archive"):
        DatasetRef.pin("npz", garbage).load(TAB)
    single = tmp_path / "single.npz"
    with single.open("wb") as f:
        np.save(f, x)
    with pytest.raises(DataError, match="a single .npy array"):
        DatasetRef.pin("npz", single).load(TAB)


def test_npz_hash_mismatch_and_missing_file(tmp_path):
    path = tmp_path / "a.npz"
    ref = _npz(path, x=np.ones((2, 3), np.float32), y=np.array([0, 1]))
    np.savez(path, x=np.ones((2, 3), np.float32), y=np.array([1, 1]))        # relabelled
    with pytest.raises(DataError, match=f"{path}: sha256 .* does not match the pinned {ref.sha256}"):
        ref.load(TAB)
    with pytest.raises(DataError, match="no such file"):
        DatasetRef.pin("npz", tmp_path / "nope.npz")


# -- CSV / Parquet -------------------------------------------------------------------------------

def _csv(path, text):
    path.write_text(text)
    return path


GOOD_CSV = "age,temp,spo2,diagnosis\n34,36.8,98,healthy\n51,39.1,94,flu\n67,38.2,88,covid\n"


def test_csv_names_ids_and_features_by_name(tmp_path):
    path = _csv(tmp_path / "a.csv", GOOD_CSV)
    ds = DatasetRef.pin("csv", path, label_column="diagnosis").load(TAB)
    assert ds.images.dtype == np.float32 and ds.images.tolist()[1] == pytest.approx([51, 39.1, 94])
    assert ds.labels.tolist() == [0, 1, 2]
    ids = _csv(tmp_path / "ids.csv", "a,b,c,y\n1,2,3,2\n4,5,6,0\n")
    assert DatasetRef.pin("csv", ids, label_column="y").load(TAB).labels.tolist() == [2, 0]
    # the spec names the features: a file with another column order and an ID column still fits
    named = TAB.model_copy(update={"feature_names": ("temp", "spo2", "age"),
                                   "preprocessing": (Normalize(mean=(37, 95, 50), std=(1, 5, 20)),)})
    shuffled = _csv(tmp_path / "s.csv", "patient,spo2,diagnosis,age,temp\nP1,98,healthy,34,36.8\n")
    ds = DatasetRef.pin("csv", shuffled, label_column="diagnosis", ignore_columns=("patient",)).load(named)
    assert ds.images.tolist() == [pytest.approx([36.8, 98, 34])]
    assert ds.tensors()[0].tolist() == [pytest.approx([-0.2, 0.6, -0.8], abs=1e-5)]


@pytest.mark.parametrize("text,options,msg", [
    (GOOD_CSV, {"label_column": "label"}, r"no label column 'label'; the columns are \['age', 'temp', 'spo2', 'diagnosis'\]"),
    ("age,temp,spo2,diagnosis\n34,36.8,98,healthy\n51,high,94,flu\n", {}, r"column 'temp' is not numeric \(type string\) \(line 3: 'high'\)"),
    ("age,temp,spo2,diagnosis\n34,36.8,98,healthy\n51,inf,94,flu\n", {}, r"inf \(NaN or infinity\) in column 'temp' at line 3"),
    ("age,temp,spo2,diagnosis\n34,36.8,98,healthy\n51,nan,94,flu\n", {}, r"missing value in column 'temp' at line 3"),
    ("age,temp,spo2,diagnosis\n34,,98,healthy\n", {}, r"missing value in column 'temp' at line 2"),
    ("age,temp,spo2,diagnosis\n34,36.8,98,healthy\n51,39.1,94,measles\n", {}, r"label 'measles' at line 3 is not one of the classes"),
    ("age,temp,spo2,diagnosis\n34,36.8,98,2\n51,39.1,94,3\n", {}, r"label id 3 at line 3 is outside the classes 0..2"),
    ("age,temp,spo2,diagnosis\n34,36.8,98,flu\n", {"labels_as": "id"}, r"label 'flu' at line 2 is not an integer class id"),
    ("age,temp,diagnosis\n34,36.8,flu\n", {}, r"2 feature columns \['age', 'temp'\], the InputSpec needs 3"),
    ("age,temp,spo2,diagnosis\n", {}, r"no data rows"),
    ("age,age,spo2,diagnosis\n1,2,3,flu\n", {}, r"duplicate column names \['age'\]"),
    (GOOD_CSV, {"ignore_columns": ("ward",)}, r"ignore_columns \['ward'\] are not columns"),
    ('a,b\n"unterminated\n', {}, r"not a readable csv file"),
])
def test_csv_errors_name_file_and_line(tmp_path, text, options, msg):
    path = _csv(tmp_path / "bad.csv", text)
    ref = DatasetRef.pin("csv", path, **{"label_column": "diagnosis", **options})
    with pytest.raises(DataError, match=f"{path}: {msg}"):
        ref.load(TAB)


def test_integer_labels_with_integer_class_names_must_say_what_they_are(tmp_path):
    spec = TAB.model_copy(update={"classes": ("1", "2", "3")})    # e.g. severity grades
    path = _csv(tmp_path / "g.csv", "a,b,c,grade\n0,0,0,1\n0,0,0,2\n")
    with pytest.raises(DataError, match="some class names are integers too.*set labels_as"):
        DatasetRef.pin("csv", path, label_column="grade").load(spec)
    assert DatasetRef.pin("csv", path, label_column="grade", labels_as="name").load(spec).labels.tolist() == [0, 1]
    assert DatasetRef.pin("csv", path, label_column="grade", labels_as="id").load(spec).labels.tolist() == [1, 2]


def test_feature_names_missing_or_unexpected_columns(tmp_path):
    named = TAB.model_copy(update={"feature_names": ("age", "temp", "spo2")})
    path = _csv(tmp_path / "m.csv", "age,temp,diagnosis,ward\n1,2,flu,3\n")
    with pytest.raises(DataError, match=r"feature columns \['spo2'\] of the InputSpec are missing"):
        DatasetRef.pin("csv", path, label_column="diagnosis").load(named)
    path = _csv(tmp_path / "x.csv", "age,temp,spo2,diagnosis,ward\n1,2,3,flu,4\n")
    with pytest.raises(DataError, match=r"columns \['ward'\] are not features of the InputSpec; list them in ignore_columns"):
        DatasetRef.pin("csv", path, label_column="diagnosis").load(named)


def test_tabular_needs_a_tabular_spec_and_a_label_column(tmp_path):
    path = _csv(tmp_path / "a.csv", GOOD_CSV)
    with pytest.raises(DataError, match="feature rows; the task's InputSpec is an image"):
        DatasetRef.pin("csv", path, label_column="diagnosis").load(GREY)
    with pytest.raises(ValidationError, match="needs label_column"):
        DatasetRef.pin("csv", path)
    with pytest.raises(ValidationError, match="resize is for image-folder"):
        DatasetRef.pin("csv", path, label_column="diagnosis", resize=True)


def test_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    table = pa.table({"age": [34, 51], "temp": [36.8, 39.1], "spo2": [98.0, 94.0], "diagnosis": ["healthy", "covid"]})
    pq.write_table(table, path)
    ds = DatasetRef.pin("parquet", path, label_column="diagnosis").load(TAB)
    assert ds.labels.tolist() == [0, 2] and ds.images[1].tolist() == pytest.approx([51, 39.1, 94])
    pq.write_table(table.set_column(3, "diagnosis", pa.array([0, 5])), path)
    with pytest.raises(DataError, match=rf"{path}: label id 5 at row 1 is outside"):
        DatasetRef.pin("parquet", path, label_column="diagnosis").load(TAB)
    pq.write_table(table.set_column(1, "temp", pa.array(["36.8", "hot"])), path)
    with pytest.raises(DataError, match=rf"{path}: column 'temp' is not numeric \(type string\) \(row 1: 'hot'\)"):
        DatasetRef.pin("parquet", path, label_column="diagnosis").load(TAB)
    pq.write_table(table.set_column(1, "temp", pa.array([36.8, float("nan")])), path)
    with pytest.raises(DataError, match=rf"{path}: nan \(NaN or infinity\) in column 'temp' at row 1"):
        DatasetRef.pin("parquet", path, label_column="diagnosis").load(TAB)
    ref = DatasetRef.pin("parquet", path, label_column="diagnosis")
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="does not match the pinned"):
        ref.load(TAB)
    with pytest.raises(DataError, match=f"{path}: not a readable parquet file"):
        DatasetRef.pin("parquet", path, label_column="diagnosis").load(TAB)


def test_relative_paths_resolve_against_base_dir(tmp_path):
    _csv(tmp_path / "a.csv", GOOD_CSV)
    ref = DatasetRef(format="csv", path="a.csv", sha256=content_digest("csv", tmp_path / "a.csv"),
                     label_column="diagnosis")
    assert len(ref.load(TAB, base_dir=tmp_path)) == 3
    assert DatasetRef.model_validate_json(ref.model_dump_json()) == ref
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert len(ref.load(TAB)) == 3
    finally:
        os.chdir(cwd)
