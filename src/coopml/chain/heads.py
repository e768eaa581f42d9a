"""New block headers pushed by the node (`eth_subscribe("newHeads")` over a websocket), so an idle
agent waits for the chain without asking it anything.

Polling cost every idle agent ~3 `eth_blockNumber` reads per 1-s block plus the drain's head read:
at N = 50 in one process, 75 agents' waits alone wanted more than the one core their interpreter
lock allows (docs/performance.md, "Idle agents at scale"). With a subscription the node pushes
each header once (number, timestamp and the logs bloom); the agent wakes, reads the block's logs
only if the bloom says the contract may have logged in it, and checks its deadlines against the
pushed timestamp. Nodes without websockets (the embedded JSON-RPC node) are polled as before; a
dropped connection is re-opened with back-off while callers poll meanwhile."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from eth_utils import keccak


def websocket_url(http_url: str) -> str | None:
    """The websocket endpoint a node serves beside its HTTP one on the same port (anvil, geth with
    --ws on the same port); None for a URL that is not http(s)."""
    parts = urlsplit(http_url)
    if parts.scheme not in ("http", "https"):
        return None
    return urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc, parts.path, "", ""))


def bloom_may_contain(bloom: bytes, item: bytes) -> bool:
    """Whether a block's 2048-bit logs bloom may hold `item` (an address or topic): False means the
    block certainly has no log from / with it (the yellow paper's M3:2048)."""
    if len(bloom) != 256:
        return True
    h = keccak(item)
    for i in (0, 2, 4):
        bit = ((h[i] << 8) | h[i + 1]) & 2047
        if not bloom[255 - bit // 8] & (1 << (bit % 8)):
            return False
    return True


class HeadSubscription:
    """A background thread holding a `newHeads` subscription; `latest` is the newest header seen
    (number, timestamp), `alive` whether the subscription is live now. Listeners (threading
    Events) are set on every new head."""

    KEEP_BLOOMS = 256

    def __init__(self, url: str, open_timeout: float = 3.0) -> None:
        self.url = url
        self.open_timeout = open_timeout
        self.latest: tuple[int, int] | None = None
        self.latest_at = 0.0                    # monotonic time of the newest push
        self._gap = 1.0                         # typical seconds between pushes (moving average)
        self.alive = False
        self.unsupported: str | None = None     # the first connection failed: this node is polled
        self._blooms: OrderedDict[int, bytes] = OrderedDict()
        self._listeners: set[threading.Event] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()         # the first attempt ended (live or refused)
        self._ws: Any = None
        self._thread = threading.Thread(target=self._run, name="coopml-heads", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ for callers

    def wait_ready(self, timeout: float) -> bool:
        """Wait for the first connection attempt; True if the subscription is live."""
        self._ready.wait(timeout)
        return self.alive

    def fresh(self) -> bool:
        """Live and pushing: the newest head came within a few typical gaps (at least 5 s). A node
        that keeps the connection but stops pushing is then read over HTTP, not trusted to be idle."""
        return self.alive and self.latest is not None and \
            time.monotonic() - self.latest_at < max(5.0, 3 * self._gap)

    def listen(self, event: threading.Event) -> None:
        with self._lock:
            self._listeners.add(event)

    def bloom(self, number: int) -> bytes | None:
        with self._lock:
            return self._blooms.get(number)

    def close(self) -> None:
        self._stop.set()
        ws = self._ws
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001, S110 - closing a dead socket
                pass

    # ------------------------------------------------------------------ the thread

    def _push(self, head: dict[str, Any]) -> None:
        number, timestamp = int(head["number"], 16), int(head["timestamp"], 16)
        bloom = bytes.fromhex(str(head.get("logsBloom", "0x"))[2:])
        now = time.monotonic()
        with self._lock:
            if self.latest is None or number > self.latest[0]:
                if self.latest is not None:
                    self._gap = 0.8 * self._gap + 0.2 * min(60.0, now - self.latest_at)
                self.latest, self.latest_at = (number, timestamp), now
            self._blooms[number] = bloom
            while len(self._blooms) > self.KEEP_BLOOMS:
                self._blooms.popitem(last=False)
            listeners = list(self._listeners)
        for e in listeners:
            e.set()

    def _run(self) -> None:
        from websockets.sync.client import connect

        backoff, connected_once = 0.5, False
        while not self._stop.is_set():
            try:
                with connect(self.url, open_timeout=self.open_timeout, close_timeout=1, max_size=2**22,
                             compression=None) as ws:
                    self._ws = ws
                    ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}))
                    reply = json.loads(ws.recv(timeout=self.open_timeout))
                    if "result" not in reply:
                        raise ConnectionError(f"eth_subscribe refused: {reply.get('error')}")
                    self.alive, connected_once, backoff = True, True, 0.5
                    self._ready.set()
                    for raw in ws:
                        msg = json.loads(raw)
                        head = msg.get("params", {}).get("result") if isinstance(msg, dict) else None
                        if msg.get("method") == "eth_subscription" and isinstance(head, dict):
                            self._push(head)
            except Exception as exc:  # noqa: BLE001 - any failure: callers poll meanwhile
                if not connected_once:
                    self.unsupported = f"{type(exc).__name__}: {exc}"[:200]
                    self._ready.set()
                    return
            finally:
                self._ws = None
                self.alive = False
                with self._lock:
                    listeners = list(self._listeners)
                for e in listeners:          # waiters go back to polling at once
                    e.set()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)


__all__ = ["HeadSubscription", "bloom_may_contain", "websocket_url"]
