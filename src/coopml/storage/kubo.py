"""Store backed by an IPFS daemon through the Kubo RPC HTTP API (kubo, or js-ipfs which speaks it).

The daemon is not trusted with integrity: `put` recomputes the CID locally and refuses a daemon
that answers another one, and `get` fetches raw blocks (`block/get`), checks each against its CID
and rebuilds the file from the links, exactly as LocalStore does; `cat` is never used. Because
the DAG itself is walked, a CIDv1 root (dag-pb or raw, any chunker) verifies as well as a v0 one.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from multiformats import CID

from coopml.errors import ContentMismatch, ContentNotFound, StorageError, StorageUnavailable
from coopml.storage.store import DEFAULT_MAX_SIZE, Store, check_chunk_size, read_chunks
from coopml.storage.unixfs import DEFAULT_CHUNK_SIZE, MAX_BLOCK_SIZE, build_file, parse_cid, read_file


class KuboStore(Store):
    """Talks to `api_url` (e.g. "http://127.0.0.1:5001"); `timeout` bounds each request in seconds;
    `parallel` block requests run at once during `get`."""

    def __init__(self, api_url: str, *, timeout: float = 60.0, max_size: int = DEFAULT_MAX_SIZE,
                 has_timeout: float = 1.0, parallel: int = 8) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.max_size = max_size
        self.has_timeout = has_timeout
        self._local = threading.local()  # one HTTP session per thread: Session is not thread-safe
        self._pool = ThreadPoolExecutor(parallel, thread_name_prefix="kubo-get")

    def __repr__(self) -> str:
        return f"KuboStore({self.api_url!r})"

    @property
    def _http(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def close(self) -> None:
        self._pool.shutdown()
        self._http.close()

    def _post(self, command: str, *, timeout: float | None = None, **kwargs: Any) -> requests.Response:
        url = f"{self.api_url}/api/v0/{command}"
        try:
            response = self._http.post(url, timeout=timeout or self.timeout, **kwargs)
        except requests.Timeout as exc:
            raise StorageUnavailable(f"IPFS API {self.api_url} did not answer {command} in time") from exc
        except requests.RequestException as exc:
            raise StorageUnavailable(f"IPFS API {self.api_url} unreachable: {exc}") from exc
        if response.status_code != 200:
            try:
                message = response.json().get("Message", response.text)
            except ValueError:
                message = response.text
            raise StorageError(f"IPFS {command} failed ({response.status_code}): {message}")
        return response

    def _daemon_timeout(self, seconds: float) -> str:
        # Ask the daemon to give up a little before our HTTP client does, so we get its answer.
        return f"{max(0.2, seconds * 0.9):.1f}s"

    def put(self, data: bytes | os.PathLike[str] | str, *, cid_version: int = 0,
            chunk_size: int = DEFAULT_CHUNK_SIZE) -> str:
        check_chunk_size(chunk_size)
        expected = None
        for expected in build_file(read_chunks(data, chunk_size, self.max_size), cid_version=cid_version):
            pass
        assert expected is not None
        params = {
            "cid-version": str(cid_version), "raw-leaves": str(cid_version == 1).lower(),
            "chunker": f"size-{chunk_size}", "hash": "sha2-256", "pin": "true", "progress": "false",
        }
        if cid_version == 1:
            params["cid-base"] = "base32"  # js-ipfs answers base58btc otherwise (and refuses it for v0)
        if isinstance(data, (bytes, bytearray, memoryview)):
            response = self._post("add", params=params,
                                   files={"file": ("blob", bytes(data), "application/octet-stream")})
        else:
            with open(data, "rb") as f:
                response = self._post("add", params=params, files={"file": ("blob", f, "application/octet-stream")})
        lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        answered = next((line["Hash"] for line in reversed(lines) if "Hash" in line), None)
        if answered is None:
            raise StorageError(f"IPFS add answered no CID: {response.text[:200]}")
        if parse_cid(answered) != expected.cid:
            raise ContentMismatch(f"daemon stored the data as {answered}, but it hashes to {expected.cid}")
        return str(expected.cid)

    def _get_block(self, cid: CID) -> bytes:
        try:
            response = self._post("block/get", params={"arg": str(cid), "timeout": self._daemon_timeout(self.timeout)},
                                  stream=True)
        except StorageError as exc:
            if isinstance(exc, StorageUnavailable):
                raise
            raise ContentNotFound(f"{cid} could not be retrieved from {self.api_url}: {exc}") from exc
        body: bytes = response.raw.read(MAX_BLOCK_SIZE + 1, decode_content=True)
        response.close()
        return body  # verified by read_file; an oversized one fails there

    def _get_blocks(self, cids: list[CID]) -> list[bytes]:
        if len(cids) == 1:
            return [self._get_block(cids[0])]
        return list(self._pool.map(self._get_block, cids))

    def get(self, cid: str) -> bytes:
        return read_file(cid, self._get_block, max_size=self.max_size, get_blocks=self._get_blocks)

    def pin(self, cid: str) -> None:
        parse_cid(cid)
        try:
            self._post("pin/add", params={"arg": cid, "recursive": "true",
                                          "timeout": self._daemon_timeout(self.timeout)})
        except StorageUnavailable:
            raise
        except StorageError as exc:
            raise ContentNotFound(f"cannot pin {cid}: {exc}") from exc

    def unpin(self, cid: str) -> None:
        parse_cid(cid)
        try:
            self._post("pin/rm", params={"arg": cid, "recursive": "true"})
        except StorageUnavailable:
            raise
        except StorageError as exc:
            if "not pinned" not in str(exc).lower():
                raise

    def has(self, cid: str) -> bool:
        """Root block held by the daemon. Kubo honours offline=true; js-ipfs ignores it and may
        ask its peers, so a missing block costs up to `has_timeout` seconds there."""
        parse_cid(cid)
        try:
            self._post("block/stat", params={"arg": cid, "offline": "true",
                                             "timeout": f"{self.has_timeout:.1f}s"},
                       timeout=self.has_timeout + 5)
        except StorageUnavailable:
            raise
        except StorageError:
            return False
        return True
