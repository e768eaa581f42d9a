"""The storage interface and its embedded backend: a content-addressed block store on local disk.

LocalStore keeps IPFS blocks one file each, named by the block's multihash (so CIDv0 and CIDv1
of one node share a file), in the same layout idea as kubo's flatfs. Several processes may use one
root at once: every write goes to a private temp file renamed into place (atomic on POSIX; the
same block written twice is the same bytes), pins are empty marker files, and `gc` takes an
exclusive lock that puts hold shared, so it never deletes blocks of a put in flight.
"""

from __future__ import annotations

import base64
import fcntl
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from multiformats import CID

from coopml.errors import ContentNotFound, ContentTooLarge, StorageError
from coopml.storage.unixfs import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    Block,
    build_file,
    child_cids,
    chunk_bytes,
    parse_cid,
    read_file,
    verify_block,
)

DEFAULT_MAX_SIZE = 1 << 30  # 1 GiB: far above a model, far below memory


def read_chunks(source: bytes | os.PathLike[str] | str, chunk_size: int, max_size: int) -> Iterator[bytes]:
    """Chunk bytes or a file for `build_file`, refusing anything over `max_size`."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > max_size:
            raise ContentTooLarge(f"{len(source)} bytes is over the store limit of {max_size}")
        yield from chunk_bytes(source, chunk_size)
        return
    path = Path(source)
    size = path.stat().st_size
    if size > max_size:
        raise ContentTooLarge(f"{path} is {size} bytes, over the store limit of {max_size}")
    with path.open("rb") as f:
        if size == 0:
            yield b""
        while chunk := f.read(chunk_size):
            yield chunk


def flatfs_key(cid: CID) -> str:
    """Kubo's flatfs name for a block: the multihash in upper-case unpadded base32 (CIQ... for sha2-256)."""
    return base64.b32encode(bytes(cid.digest)).decode().rstrip("=")


def check_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise StorageError(f"chunk size must be 1..{MAX_CHUNK_SIZE} bytes, got {chunk_size}")


class Store(ABC):
    """Content-addressed storage of files (encrypted models, data) named by IPFS CIDs."""

    max_size: int

    @abstractmethod
    def put(self, data: bytes | os.PathLike[str] | str, *, cid_version: int = 0,
            chunk_size: int = DEFAULT_CHUNK_SIZE) -> str:
        """Store bytes or a file's contents, pinned; return the CID `ipfs add` would give it."""

    @abstractmethod
    def get(self, cid: str) -> bytes:
        """Return the content of `cid`, every block verified (ContentMismatch if tampered)."""

    @abstractmethod
    def pin(self, cid: str) -> None:
        """Keep `cid` and everything under it from garbage collection (must be retrievable)."""

    @abstractmethod
    def unpin(self, cid: str) -> None:
        """Allow garbage collection of `cid` (no error if it was not pinned)."""

    @abstractmethod
    def has(self, cid: str) -> bool:
        """True when the store holds the root block of `cid` now (no network fetch)."""

    def close(self) -> None:
        """Release connections and threads (nothing to do for a local store)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalStore(Store):
    """Embedded block store under `root` (created if missing); the default backend."""

    def __init__(self, root: os.PathLike[str] | str, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.root = Path(root)
        self.max_size = max_size
        self._blocks = self.root / "blocks"
        self._pins = self.root / "pins"
        self._tmp = self.root / "tmp"
        for d in (self._blocks, self._pins, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.root / "gc.lock"
        self._lock_path.touch(exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- blocks --
    def _block_path(self, cid: CID) -> Path:
        key = flatfs_key(cid)
        return self._blocks / key[-3:-1] / key

    def _write_block(self, block: Block) -> None:
        path = self._block_path(block.cid)
        if path.exists():
            return
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(block.data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _read_block(self, cid: CID) -> bytes:
        try:
            return self._block_path(cid).read_bytes()
        except FileNotFoundError:
            raise ContentNotFound(f"{cid} is not in {self}") from None

    @contextmanager
    def _lock(self, kind: int) -> Iterator[None]:
        with self._lock_path.open("rb") as f:
            fcntl.flock(f, kind)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- Store --
    def put(self, data: bytes | os.PathLike[str] | str, *, cid_version: int = 0,
            chunk_size: int = DEFAULT_CHUNK_SIZE) -> str:
        check_chunk_size(chunk_size)
        root = None
        with self._lock(fcntl.LOCK_SH):
            # Children are written before parents, so a root present on disk means a whole DAG.
            for root in build_file(read_chunks(data, chunk_size, self.max_size), cid_version=cid_version):
                self._write_block(root)
            assert root is not None
            self._pin_path(root.cid).touch()
        return str(root.cid)

    def get(self, cid: str) -> bytes:
        return read_file(cid, self._read_block, max_size=self.max_size)

    def _pin_path(self, cid: CID) -> Path:
        return self._pins / str(cid)

    def pin(self, cid: str) -> None:
        parsed = parse_cid(cid)
        with self._lock(fcntl.LOCK_SH):
            self._walk(parsed, verify=True)
            self._pin_path(parsed).touch()

    def unpin(self, cid: str) -> None:
        self._pin_path(parse_cid(cid)).unlink(missing_ok=True)

    def has(self, cid: str) -> bool:
        return self._block_path(parse_cid(cid)).exists()

    def pins(self) -> list[str]:
        return sorted(p.name for p in self._pins.iterdir())

    def _walk(self, cid: CID, *, verify: bool) -> Iterator[CID]:
        """Every CID of the DAG under `cid` (ContentNotFound if a block is missing)."""
        stack = [cid]
        seen: set[CID] = set()
        out = []
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            block = self._read_block(current)
            if verify:
                verify_block(current, block)
            out.append(current)
            stack.extend(child_cids(current, block))
        return iter(out)

    def gc(self) -> int:
        """Delete blocks no pin reaches; return how many. Waits for puts in flight to finish."""
        with self._lock(fcntl.LOCK_EX):
            keep = {self._block_path(c) for pin in self.pins() for c in self._walk(parse_cid(pin), verify=False)}
            removed = 0
            for path in self._blocks.glob("*/*"):
                if path not in keep:
                    path.unlink(missing_ok=True)
                    removed += 1
            for stale in self._tmp.iterdir():  # temp files of writers that died; none run under EX
                stale.unlink(missing_ok=True)
            return removed


def open_store(spec: str | os.PathLike[str], **options: Any) -> Store:
    """A store from a spec: "http://127.0.0.1:5001" (Kubo RPC API), "local:/path" or a plain path."""
    text = os.fspath(spec)
    if text.startswith(("http://", "https://")):
        from coopml.storage.kubo import KuboStore

        return KuboStore(text, **options)
    text = text.removeprefix("local:")
    if not text:
        raise StorageError("empty store spec: give a directory, local:/dir or http://host:port")
    return LocalStore(text, **options)
