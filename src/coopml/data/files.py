"""Datasets from the files people have: an image folder per class, .npz, CSV, Parquet.

A `DatasetRef` names one file (or folder), its format, how labels are stored, and its sha256; it
loads to a `Dataset` checked against the task's `InputSpec`. The bytes are hashed as they are
read and the same bytes are parsed, so what was checked is what is used. Any problem is a
`DataError` naming the file (and the row, entry or image where there is one).

Pinning: a file's pin is the sha256 of its bytes. A folder's pin is the sha256 of its canonical
listing: one line ``<sha256 of the file>  <path relative to the folder>`` per file, sorted by the
UTF-8 bytes of the path -- the output format of ``sha256sum``, so
``cd root && find . -type f ! -path '*/.*' | sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum``
gives the same digest. Hidden files and folders (name starting with '.') are not part of a folder
dataset (.DS_Store, .ipynb_checkpoints); every other file is.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from coopml.data.datasets import Dataset
from coopml.data.spec import InputSpec
from coopml.errors import DataError

DatasetFormat = Literal["image-folder", "npz", "csv", "parquet"]
LabelEncoding = Literal["name", "id"]
# torchvision's ImageFolder extensions (compared case-insensitively)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# the aspect ratio a resize may change (relative): more would distort the picture
ASPECT_TOLERANCE = 0.01
_INT = re.compile(r"^[+-]?\d+$")


class DatasetRef(BaseModel):
    """One dataset file (or image folder) pinned by its content hash.

    path: the file (npz/csv/parquet) or the folder's root (image-folder); a relative path is
        resolved against the `base_dir` given to `load` (e.g. the directory of the config).
    sha256: of the file's bytes, or of the folder's canonical listing (see `content_digest`).
    label_column: csv/parquet: the column holding the labels; every other column is a feature
        (unless listed in `ignore_columns`; with InputSpec.feature_names, columns are taken by name).
    labels_as: 'name' (class names, e.g. "pneumonia") or 'id' (0..K-1 in the spec's class order);
        None: string labels are names and integer labels ids (refused as ambiguous when some
        class names are integers other than their own id).
    resize: image-folder: False (default) requires every image to have the spec's H x W exactly;
        True resizes (bilinear) images of the same aspect ratio (within 1%), never others.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: DatasetFormat
    path: Path
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    label_column: str | None = None
    labels_as: LabelEncoding | None = None
    ignore_columns: tuple[str, ...] = ()
    resize: bool = False

    @model_validator(mode="after")
    def _options_fit_format(self) -> DatasetRef:
        tabular = self.format in ("csv", "parquet")
        if tabular and not self.label_column:
            raise ValueError(f"a {self.format} dataset needs label_column (the column holding the labels)")
        if not tabular and (self.label_column is not None or self.ignore_columns):
            raise ValueError(f"label_column / ignore_columns are for csv and parquet, not {self.format}")
        if self.resize and self.format != "image-folder":
            raise ValueError("resize is for image-folder datasets")
        if self.labels_as is not None and self.format == "image-folder":
            raise ValueError("an image folder's labels are its class folder names; labels_as does not apply")
        return self

    @classmethod
    def pin(cls, format: DatasetFormat, path: str | Path, **options: Any) -> DatasetRef:
        """A ref to `path` as it is now (computes the sha256); `options` are the other fields."""
        return cls(format=format, path=Path(path), sha256=content_digest(format, path), **options)

    def resolve(self, base_dir: str | Path | None = None) -> Path:
        return self.path if self.path.is_absolute() or base_dir is None else Path(base_dir) / self.path

    def load(self, spec: InputSpec, base_dir: str | Path | None = None) -> Dataset:
        """Read, verify the pin, parse and validate against `spec`."""
        path = self.resolve(base_dir)
        if self.format == "image-folder":
            return _load_image_folder(path, self.sha256, spec, self.resize)
        data = _read_pinned_file(path, self.sha256)
        if self.format == "npz":
            return _load_npz(data, str(path), spec, self.labels_as)
        assert self.label_column is not None  # the validator guarantees it
        return _load_table(data, str(path), self.format, spec, self.label_column, self.labels_as,
                           self.ignore_columns)


# -- hashing -------------------------------------------------------------------------------------

def content_digest(format: DatasetFormat, path: str | Path) -> str:
    """The pin of a dataset: sha256 of a file, or of an image folder's canonical listing."""
    path = Path(path)
    if format == "image-folder":
        return hashlib.sha256(folder_listing(path).encode()).hexdigest()
    return hashlib.sha256(_read_file(path)).hexdigest()


def folder_listing(root: str | Path) -> str:
    """The canonical listing of a folder: '<sha256>  <relative path>' per file, sorted."""
    root = Path(root)
    return "".join(f"{hashlib.sha256(_read_file(p)).hexdigest()}  {rel}\n" for rel, p in _folder_files(root))


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _read_pinned_file(path: Path, sha256: str) -> bytes:
    data = _read_file(path)
    _check_pin(path, hashlib.sha256(data).hexdigest(), sha256)
    return data


def _check_pin(path: Path, digest: str, pinned: str) -> None:
    if digest != pinned:
        raise DataError(f"{path}: sha256 {digest} does not match the pinned {pinned}; the data changed or "
                        f"was tampered with (if the change is intended, pin it again with DatasetRef.pin)")


def _folder_files(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of every non-hidden file under `root`, sorted by path bytes."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (an image folder is root/<class>/<image file>)")

    def fail(exc: OSError) -> None:
        raise DataError(f"{exc.filename}: cannot be listed ({exc.strerror or exc})")

    out = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        for d in dirnames:
            if not d.startswith(".") and os.path.islink(os.path.join(dirpath, d)):
                raise DataError(f"{os.path.join(dirpath, d)}: symlinked folders are not followed; "
                                f"copy the images or link the files instead")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if "\n" in rel or "\\" in rel:
                raise DataError(f"{path}: file names with newlines or backslashes cannot be listed canonically")
            out.append((rel, path))
    return sorted(out, key=lambda item: item[0].encode())


# -- image folder --------------------------------------------------------------------------------

def _load_image_folder(root: Path, pinned: str, spec: InputSpec, resize: bool) -> Dataset:
    if not spec.is_image or spec.shape[0] not in (1, 3):
        raise DataError(f"{root}: an image folder needs an image InputSpec of shape [1 or 3, H, W], "
                        f"the task's is {list(spec.shape)}")
    if spec.dtype != "uint8":
        raise DataError(f"{root}: image folders are read as 8-bit images; the InputSpec's dtype is "
                        f"{spec.dtype} (use .npz for other sample types)")
    files = _folder_files(root)
    listing = hashlib.sha256()
    images: list[np.ndarray] = []
    labels: list[int] = []
    first_error: DataError | None = None
    for rel, path in files:          # one read per file: the bytes hashed are the bytes decoded
        data = _read_file(path)
        digest = hashlib.sha256(data).hexdigest()
        listing.update(f"{digest}  {rel}\n".encode())
        if first_error is not None:
            continue
        try:
            labels.append(_class_of(root, rel, path, spec))
            images.append(_decode_image(data, str(path), spec, resize))
        except DataError as exc:
            first_error = exc
    _check_pin(root, listing.hexdigest(), pinned)     # tampering is the cause to report first
    if first_error is not None:
        raise first_error
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not any(rel.startswith(folder.name + "/") for rel, _ in files):
            raise DataError(f"{folder}: empty class folder (no image files)")
    if not images:
        raise DataError(f"{root}: no class folders with images (expected root/<class>/<image file>, "
                        f"classes {list(spec.classes)})")
    return Dataset(np.stack(images), np.asarray(labels, np.int64), spec)


def _class_of(root: Path, rel: str, path: Path, spec: InputSpec) -> int:
    if "/" not in rel:
        raise DataError(f"{path}: file at the top of the image folder; images go in {root}/<class>/")
    folder = rel.split("/", 1)[0]
    if folder not in spec.classes:
        raise DataError(f"{root / folder}: folder name {folder!r} is not one of the classes {list(spec.classes)}")
    if not path.name.lower().endswith(IMAGE_EXTENSIONS):
        raise DataError(f"{path}: not an image file (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return spec.classes.index(folder)


def _decode_image(data: bytes, where: str, spec: InputSpec, resize: bool) -> np.ndarray:
    """8-bit [C, H, W] in the spec's channels (grey 'L' or 'RGB', Pillow's conversions)."""
    from PIL import Image  # Pillow is only needed for image folders

    channels, height, width = spec.shape
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                frames = getattr(opened, "n_frames", 1)
                if frames != 1:
                    raise DataError(f"{where}: has {frames} frames; one image per file")
                if opened.mode.startswith(("I", "F")):
                    raise DataError(f"{where}: {opened.mode} image (more than 8 bits per channel); convert to "
                                    f"8-bit or store the samples in .npz")
                opened.load()
                im = opened.convert("L" if channels == 1 else "RGB")
    except DataError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad files
        raise DataError(f"{where}: unreadable or corrupt image ({type(exc).__name__}: {exc})") from exc
    if im.size != (width, height):
        if not resize:
            raise DataError(f"{where}: image is {im.width}x{im.height} (WxH), the InputSpec needs {width}x{height}; "
                            f"resize the images, or set resize=True for same-aspect-ratio images")
        if abs(im.width * height - im.height * width) > ASPECT_TOLERANCE * im.height * width:
            raise DataError(f"{where}: image is {im.width}x{im.height}, resizing to {width}x{height} would "
                            f"change its aspect ratio (distort it); crop or pad it first")
        im = im.resize((width, height), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


# -- npz -----------------------------------------------------------------------------------------

def _load_npz(data: bytes, where: str, spec: InputSpec, labels_as: LabelEncoding | None) -> Dataset:
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{where}: not a readable .npz archive ({type(exc).__name__}: {exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{where}: a single .npy array, not an .npz archive with arrays 'x' and 'y'")
    with archive:
        missing = [k for k in ("x", "y") if k not in archive.files]
        if missing:
            raise DataError(f"{where}: no array {' or '.join(map(repr, missing))}; it holds {archive.files}")
        arrays = {}
        for key in ("x", "y"):
            try:
                arrays[key] = archive[key]
            except ValueError as exc:   # object arrays need pickle, which we never allow
                raise DataError(f"{where}: array {key!r} cannot be read without pickle ({exc}); refused") from None
            except Exception as exc:
                raise DataError(f"{where}: array {key!r} is corrupt ({type(exc).__name__}: {exc})") from exc
    x, y = arrays["x"], arrays["y"]
    if len(x.shape) == 0 or x.shape[0] == 0:
        raise DataError(f"{where}: array 'x' holds no samples")
    x = spec.cast_raw(spec.batch_shape(x, f"{where}: array 'x'"), f"{where}: array 'x'")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{where}: array 'y' has shape {y.shape}, expected ({len(x)},) (one label per sample)")
    if y.dtype.kind in "iu":
        ids = _resolve_labels(y.tolist(), True, spec, labels_as, where, lambda i: f"y[{i}]")
    elif y.dtype.kind in "US":
        ids = _resolve_labels([v.decode() if isinstance(v, bytes) else v for v in y.tolist()], False,
                              spec, labels_as, where, lambda i: f"y[{i}]")
    else:
        raise DataError(f"{where}: array 'y' has dtype {y.dtype}; labels are integer class ids or class-name strings")
    return Dataset(x, ids, spec)


# -- labels --------------------------------------------------------------------------------------

def _resolve_labels(values: Sequence[Any], integers: bool, spec: InputSpec, labels_as: LabelEncoding | None,
                    where: str, pos: Callable[[int], str]) -> np.ndarray:
    """Label ids (int64) from integer or string labels, per `labels_as` (see DatasetRef)."""
    mode = labels_as
    if mode is None:
        mode = "name"
        if integers:
            int_names = [c for c in spec.classes if _INT.match(c)]
            if int_names and list(spec.classes) != [str(i) for i in range(spec.num_classes)]:
                raise DataError(f"{where}: the labels are integers and some class names are integers too "
                                f"({int_names[:3]}); set labels_as to 'id' or 'name' to say which they are")
            mode = "id"
    if mode == "id":
        ids = []
        for i, v in enumerate(values):
            if v is None:
                raise DataError(f"{where}: missing label at {pos(i)}")
            if not integers and not (isinstance(v, str) and _INT.match(v.strip())):
                raise DataError(f"{where}: label {v!r} at {pos(i)} is not an integer class id (labels_as='id')")
            c = int(v)
            if not 0 <= c < spec.num_classes:
                raise DataError(f"{where}: label id {c} at {pos(i)} is outside the classes 0..{spec.num_classes - 1}")
            ids.append(c)
        return np.asarray(ids, np.int64)
    lookup = {name: k for k, name in enumerate(spec.classes)}
    out = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        if v is None:
            raise DataError(f"{where}: missing label at {pos(i)}")
        key = str(v).strip() if isinstance(v, str) else str(v)
        if key not in lookup:
            raise DataError(f"{where}: label {v!r} at {pos(i)} is not one of the classes {list(spec.classes)}")
        out[i] = lookup[key]
    return out


# -- CSV / Parquet -------------------------------------------------------------------------------

def _load_table(data: bytes, where: str, fmt: Literal["csv", "parquet"], spec: InputSpec, label_column: str,
                labels_as: LabelEncoding | None, ignore_columns: Sequence[str]) -> Dataset:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if spec.is_image:
        raise DataError(f"{where}: a {fmt} file holds feature rows; the task's InputSpec is an image "
                        f"{list(spec.shape)} (tabular specs have shape [F])")
    try:
        if fmt == "csv":   # labels read as text: '007' stays '007', and we decide what they mean
            table = pacsv.read_csv(pa.BufferReader(data),
                                   convert_options=pacsv.ConvertOptions(column_types={label_column: pa.string()}))
        else:
            table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise DataError(f"{where}: not a readable {fmt} file ({exc})") from None
    pos: Callable[[int], str] = (lambda i: f"line {i + 2}") if fmt == "csv" else (lambda i: f"row {i}")
    names = list(table.column_names)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{where}: duplicate column names {dup}")
    if label_column not in names:
        raise DataError(f"{where}: no label column {label_column!r}; the columns are {names}")
    unknown = [c for c in ignore_columns if c not in names]
    if unknown:
        raise DataError(f"{where}: ignore_columns {unknown} are not columns of the file ({names})")
    if table.num_rows == 0:
        raise DataError(f"{where}: no data rows")
    features = [c for c in names if c != label_column and c not in ignore_columns]
    if spec.feature_names is not None:
        missing = [c for c in spec.feature_names if c not in features]
        extra = [c for c in features if c not in spec.feature_names]
        if missing:
            raise DataError(f"{where}: feature columns {missing} of the InputSpec are missing")
        if extra:
            raise DataError(f"{where}: columns {extra} are not features of the InputSpec; list them in "
                            f"ignore_columns to leave them out")
        features = list(spec.feature_names)
    elif len(features) != spec.shape[0]:
        raise DataError(f"{where}: {len(features)} feature columns {features}, the InputSpec needs {spec.shape[0]}")

    cols = []
    for name in features:
        col = table.column(name)
        if pa.types.is_null(col.type):   # every cell empty
            raise DataError(f"{where}: missing value in column {name!r} at {pos(0)} (the column is empty)")
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
            values = col.to_pylist()
            bad = next((i for i, v in enumerate(values) if v is not None and not _is_number(v)), None)
            at = f" ({pos(bad)}: {values[bad]!r})" if bad is not None else ""
            raise DataError(f"{where}: column {name!r} is not numeric (type {col.type}){at}")
        if col.null_count:
            i = next(i for i, v in enumerate(col.to_pylist()) if v is None)
            raise DataError(f"{where}: missing value in column {name!r} at {pos(i)}")
        arr = col.to_numpy().astype(np.float64) if not pa.types.is_floating(col.type) else col.to_numpy()
        finite = np.isfinite(arr)
        if not finite.all():
            i = int(np.argmin(finite))
            raise DataError(f"{where}: {arr[i]} (NaN or infinity) in column {name!r} at {pos(i)}")
        cols.append(arr)
    x = spec.cast_raw(np.stack(cols, axis=1), where)

    label = table.column(label_column)
    if pa.types.is_integer(label.type):
        ids = _resolve_labels(label.to_pylist(), True, spec, labels_as, where, pos)
    elif pa.types.is_string(label.type) or pa.types.is_large_string(label.type) or pa.types.is_dictionary(label.type):
        values = [None if v is None else str(v) for v in label.to_pylist()]
        integers = labels_as != "name" and all(v is not None and _INT.match(v.strip()) for v in values)
        ids = _resolve_labels([int(v) for v in values] if integers else values,
                              integers, spec, labels_as, where, pos)
    else:
        raise DataError(f"{where}: label column {label_column!r} has type {label.type}; labels are class "
                        f"names (text) or integer class ids")
    return Dataset(x, ids, spec)


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


# -- unlabelled samples (prediction) -------------------------------------------------------------

def load_samples(path: str | Path, spec: InputSpec, label_column: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Raw samples [N, *spec.shape] to predict on, and a name per sample, from an image folder (any
    image files below it, classes unknown), an .npz (array 'x'; 'y' ignored) or a CSV / Parquet file
    (the feature columns the InputSpec names, other columns such as an id ignored; without names,
    every column but `label_column`)."""
    path = Path(path)
    if path.is_dir():
        if not spec.is_image:
            raise DataError(f"{path}: a folder of images, but the task's InputSpec is tabular {list(spec.shape)}")
        files = [(rel, p) for rel, p in _folder_files(path) if p.name.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            raise DataError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return np.stack([_decode_image(_read_file(p), str(p), spec, False) for _, p in files]), [r for r, _ in files]
    suffix = path.suffix.lower()
    data = _read_file(path)
    if suffix == ".npz":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                if "x" not in archive.files:
                    raise DataError(f"{path}: no array 'x'; it holds {archive.files}")
                x = archive["x"]
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - numpy/zipfile raise many types on a damaged archive
            raise DataError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
        x = spec.cast_raw(spec.batch_shape(x, f"{path}: array 'x'"), f"{path}: array 'x'")
        return x, [f"x[{i}]" for i in range(len(x))]
    if suffix in (".csv", ".parquet"):
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
        fmt: Literal["csv", "parquet"] = "csv" if suffix == ".csv" else "parquet"
        try:
            table = pacsv.read_csv(pa.BufferReader(data)) if fmt == "csv" else pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable {fmt} file ({exc})") from None
        names = [c for c in table.column_names if c != label_column]
        label = "__coopml_row__"
        table = table.append_column(label, pa.array(["0"] * table.num_rows)).select([*names, label])
        ignore = [c for c in names if spec.feature_names is not None and c not in spec.feature_names]
        buf = io.BytesIO()
        pq.write_table(table, buf)
        ds = _load_table(buf.getvalue(), str(path), "parquet", spec, label, "id", ignore)
        return ds.images, [f"row {i + 1}" for i in range(len(ds.images))]
    raise DataError(f"{path}: cannot tell the format; give an image folder, .npz, .csv or .parquet")
