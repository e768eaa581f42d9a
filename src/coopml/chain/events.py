"""Restart-safe event polling for agents: the cursor remembers the last block scanned and the last
(block, logIndex) handled, optionally in a JSON file, so a restarted agent resumes exactly after
what it processed. Dev chains (eth-tester, anvil, the embedded node) do not reorg; on a real
chain pass `confirmations` so only blocks that deep are read.

Idle agents should not spin: `wait_for_activity(timeout)` sleeps with exponential back-off
(0.2 s -> 2 s) and costs one `eth_blockNumber` per wake-up plus one `eth_getLogs` per new block,
returning as soon as there are events for this cursor."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from hexbytes import HexBytes

from coopml.chain.artifacts import load_artifact
from coopml.chain.backends import Chain
from coopml.chain.heads import HeadSubscription, bloom_may_contain
from coopml.chain.transactions import is_unavailable
from coopml.errors import ChainError, ChainUnavailable


@dataclass(frozen=True)
class ChainEvent:
    """One decoded contract event."""

    name: str
    args: dict[str, Any]
    block_number: int
    log_index: int
    tx_hash: str

    @property
    def position(self) -> tuple[int, int]:
        return (self.block_number, self.log_index)


class EventCursor:
    """Polls the contract's events after a saved position.

    `poll()` returns the new events and advances (and saves) the position past them: an agent
    that crashes while handling them will not see them again. `drain(handler)` saves after each
    handled event instead, so a crash re-delivers only the event being handled.
    """

    def __init__(self, chain: Chain, address: str, state_path: str | Path | None = None,
                 from_block: int = 0, names: Iterable[str] | None = None, confirmations: int = 0,
                 max_span: int = 5_000):
        self.chain = chain
        self.address = to_checksum_address(address)
        self.contract = chain.contract(self.address)
        self.state_path = Path(state_path) if state_path else None
        self.names = set(names) if names else None
        self.confirmations = confirmations
        self.max_span = max_span
        self.next_block = from_block
        self.last: tuple[int, int] | None = None
        # the latest block's timestamp as of the last `fetch` (drain, poll): chain time for free
        self.head_time: int | None = None
        self._head_read_at = 0.0      # monotonic, the last head read
        self._heads: HeadSubscription | None = None   # pushed headers, once `wait_for_block` started them
        self._heads_started = False
        self._pushed = threading.Event()              # set on every pushed head (when no `wake` is given)
        self._address_bytes = bytes.fromhex(self.address[2:])
        self._events = {}
        for item in load_artifact("CoopML")["abi"]:
            if item["type"] == "event":
                event = getattr(self.contract.events, item["name"])()
                self._events[HexBytes(event.topic)] = event
        if self.state_path and self.state_path.is_file():
            self.load()

    # ------------------------------------------------------------------ persistence

    def state(self) -> dict[str, Any]:
        return {"address": self.address, "next_block": self.next_block,
                "last": list(self.last) if self.last else None}

    def load(self) -> None:
        assert self.state_path is not None
        state = json.loads(self.state_path.read_text())
        if state.get("address") not in (None, self.address):
            raise ChainError(f"cursor file {self.state_path} belongs to contract {state['address']}")
        self.next_block = int(state["next_block"])
        self.last = tuple(state["last"]) if state.get("last") else None

    def save(self) -> None:
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(self.state_path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.state()))
        os.replace(tmp, self.state_path)  # atomic: a crash leaves the old or the new state

    # ------------------------------------------------------------------ polling

    def _head(self, with_time: bool = False) -> int:
        """The newest block this cursor may read: `confirmations` blocks below the chain head
        (`with_time`: and keep the head's timestamp in `head_time`, in the same read)."""
        try:
            self._head_read_at = time.monotonic()
            if with_time:
                number, self.head_time = self.chain.head()
                return number - self.confirmations
            return self.chain.block_number() - self.confirmations
        except Exception as exc:
            if is_unavailable(exc):
                raise ChainUnavailable(f"node unreachable while reading the head: {exc}") from exc
            raise

    def _logs(self, start: int, end: int, topics: list[Any] | None = None) -> list[Any]:
        params: dict[str, Any] = {"address": self.address, "fromBlock": start, "toBlock": end}
        if topics:
            params["topics"] = topics
        try:
            return list(self.chain.w3.eth.get_logs(params))  # type: ignore[arg-type]
        except Exception as exc:
            if is_unavailable(exc):
                raise ChainUnavailable(f"node unreachable while reading logs: {exc}") from exc
            raise

    def fetch(self) -> tuple[list[ChainEvent], int]:
        """New events after the position (not yet marked) and the last block they cover."""
        head = self._pushed_head()
        if head is None:
            head = self._head(with_time=True)
        events: list[ChainEvent] = []
        start = self.next_block
        while start <= head:
            end = min(head, start + self.max_span - 1)
            if self._surely_no_logs(start, end):
                start = end + 1
                continue
            logs = self._logs(start, end)
            for log in logs:
                ev = self._decode(log)
                if ev is None or (self.last is not None and ev.position <= self.last):
                    continue
                if self.names is None or ev.name in self.names:
                    events.append(ev)
            start = end + 1
        events.sort(key=lambda e: e.position)
        return events, head

    def poll(self) -> list[ChainEvent]:
        events, head = self.fetch()
        if events:
            self.last = events[-1].position
        self.next_block = max(self.next_block, head + 1)
        self.save()
        return events

    def drain(self, handler: Callable[[ChainEvent], None]) -> int:
        """Handle each new event in order, saving the position after each; returns the count."""
        events, head = self.fetch()
        for ev in events:
            handler(ev)
            self.last = ev.position
            self.save()
        self.next_block = max(self.next_block, head + 1)
        self.save()
        return len(events)

    def wait_for_activity(self, timeout: float, min_interval: float = 0.2, max_interval: float = 2.0,
                          wake: threading.Event | None = None, until_block: int | None = None) -> bool:
        """Sleep until this cursor has new (confirmed) events to poll/drain — True — or until
        `timeout` seconds passed — False. Cheap when idle: the poll interval doubles from
        `min_interval` up to `max_interval` while nothing for this cursor happens; blocks with
        nothing for it are skipped for good (as a poll would). A node that is briefly
        unreachable is waited for, not raised, until the timeout. `wake` (set by another thread,
        e.g. when a computation finished) ends the wait at once — True — and is cleared; so does
        block `until_block` (a block the caller waits for although it may carry no event for it,
        e.g. the one after which a draw is allowed)."""
        topics = [[HexBytes(t).to_0x_hex() for t, ev in self._events.items() if ev.event_name in self.names]] \
            if self.names else None

        def ready() -> bool:
            head = self._head()
            while head >= self.next_block:
                end = min(head, self.next_block + self.max_span - 1)
                if any(self._is_new(log) for log in self._logs(self.next_block, end, topics)):
                    return True
                self.next_block = end + 1
                self.save()
            return until_block is not None and head >= until_block
        return self._sleep_until(ready, timeout, min_interval, max_interval, wake)

    def _pushed_head(self) -> int | None:
        """The newest block this cursor may read from the node's pushed headers (its timestamp
        into `head_time`): no request. None when no subscription is live."""
        heads = self._heads
        latest = heads.latest if heads is not None and heads.fresh() else None
        if latest is None:
            return None
        self.head_time = latest[1]
        return latest[0] - self.confirmations

    def _surely_no_logs(self, start: int, end: int) -> bool:
        """Whether the pushed headers' logs blooms prove this contract logged nothing in blocks
        start..end (then no `eth_getLogs`): a quiet contract costs an idle agent no request."""
        heads = self._heads
        if heads is None or end - start > 64:
            return False
        for n in range(start, end + 1):
            bloom = heads.bloom(n)
            if bloom is None or bloom_may_contain(bloom, self._address_bytes):
                return False
        return True

    def wait_for_block(self, timeout: float, min_interval: float = 0.2, max_interval: float = 2.0,
                       wake: threading.Event | None = None) -> bool:
        """Sleep until a block this cursor has not read yet is mined (or `wake` is set, which is then
        cleared) — True — or `timeout` seconds passed — False. One `eth_blockNumber` per wake-up,
        the interval doubling from `min_interval` to `max_interval`; the new block's events are read
        by the next `drain`, once (`wait_for_activity` reads them here and again in `drain`). A node
        that is briefly unreachable is waited for until the timeout. Right after a read of the head
        (a drain), the first read waits `min_interval`: the block just read is not news.

        If the node pushes new headers (`Chain.heads`: a websocket subscription, started on the
        first call), nothing is read at all: the wait ends on the pushed head (`wake`, or a private
        event, is set by it). Polling takes over while the subscription is down."""
        if not self._heads_started:
            self._heads_started = True
            self._heads = self.chain.heads()
        heads = self._heads
        if heads is not None and heads.fresh():
            signal = wake if wake is not None else self._pushed
            heads.listen(signal)
            if wake is None:
                signal.clear()       # a push already seen is not news (a caller's `wake` may be: kept)
            latest = heads.latest
            if latest is not None and latest[0] - self.confirmations >= self.next_block:
                return True
            if signal.wait(timeout):
                signal.clear()
                return True          # a new head, a job's end, or the subscription dropped: a round decides
            return False
        if time.monotonic() - self._head_read_at < min_interval:
            if wake is None:
                time.sleep(min_interval)
            elif wake.wait(min_interval):
                wake.clear()
                return True
        return self._sleep_until(lambda: self._head() >= self.next_block, timeout, min_interval, max_interval, wake)

    @staticmethod
    def _sleep_until(ready: Callable[[], bool], timeout: float, min_interval: float, max_interval: float,
                     wake: threading.Event | None) -> bool:
        deadline = time.monotonic() + timeout
        interval = min_interval
        while True:
            try:
                if ready():
                    return True
            except ChainUnavailable:
                pass  # the node restarts: keep waiting until the timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if wake is None:
                time.sleep(min(interval, remaining))
            elif wake.wait(min(interval, remaining)):
                wake.clear()
                return True
            interval = min(interval * 2, max_interval)

    def _is_new(self, log: Any) -> bool:
        return self.last is None or (int(log["blockNumber"]), int(log["logIndex"])) > self.last

    def _decode(self, log: Any) -> ChainEvent | None:
        if not log["topics"]:
            return None
        event = self._events.get(HexBytes(log["topics"][0]))
        if event is None:
            return None
        data = event.process_log(log)
        return ChainEvent(data["event"], dict(data["args"]), int(log["blockNumber"]), int(log["logIndex"]),
                          HexBytes(log["transactionHash"]).hex())
