"""The shape every role shares: a reconciler driven by chain events, robust to anything it receives.

Each round: record what new (confirmed) events say, idempotently, as typed facts; then `step()`:
look at chain state plus local facts and do whatever is due. Every action is re-derived from chain
state, so a node killed at any point and restarted carries on; the contract refuses repeats.

Robustness rules (docs/threat-model.md, P6):
- every item another party controls (a message, a model, a request) is handled through `handle()`:
  any error while handling it becomes a recorded `Decision` (rejected, with the reason), a transient
  one (store or node unreachable, content not there yet) is retried with back-off until the chain
  deadline that makes the item relevant has passed — never a crash, never a crash loop;
- an item counts as handled only once its decision is stored;
- deadlines come from the chain: an agent never gives up on a wall clock;
- a contract revert caused by a race (another node finalized first, a window just closed) is logged
  and the state re-read; a revert that means this node can never proceed (unknown task, terms it
  cannot accept) stops the node at once with a message for a person.

Waking (docs/performance.md, "Idle agents at scale"): an idle node reads every new block's events
(facts are recorded for all of them) but steps only when something it follows may have changed —
an event that `wakes` it (its own model, a ballot it sits on, a message into its inbox), a block
or chain time it registered (`wake_at`, `wake_after`: a draw block, a deadline), a job or send
that ended, a retry that is due — or, as a safety net, `idle_step_s` after its last step. With
every node stepping on every event, a task's N nodes did O(N) chain reads per event, O(N^2) over
the task: at N = 50 half the CPU of the one-box run went to such rounds.

Agents receive their dependencies (the task client, the store, the state, the log), so one agent
can be unit-tested against fakes.
"""

from __future__ import annotations

import fcntl
import os
import resource
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from coopml.chain import ChainEvent, TaskClient
from coopml.chain.events import EventCursor
from coopml.errors import ChainError, ContentNotFound, ContractRevert, CoopmlError, StorageError, StorageUnavailable
from coopml.paths import write_private
from coopml.roles.config import NodeConfig
from coopml.roles.log import EventLog, LogEvent, Role
from coopml.roles.sealing import BoxKeyPair
from coopml.roles.state import AgentState, Decision, Fact, Outcome
from coopml.storage import Store

BROADCAST = "0x" + "00" * 20     # a message's `to` when it is for every node that expects it
# Reverts after which this node can never do what it set out to do: stop with a clear message.
PERMANENT_REVERTS = frozenset({"UnknownTask", "InitiatorCannotParticipate", "IncorrectDeposit", "IncorrectEscrow",
                               "InvalidTerms", "TaskClosed", "AnnounceWindowOver"})


def _transient_errors() -> tuple[type[BaseException], ...]:
    from coopml import errors
    names = ("ChainUnavailable", "TransactionDropped")
    extra = tuple(getattr(errors, n) for n in names if hasattr(errors, n))
    return (StorageUnavailable, ContentNotFound, ConnectionError, TimeoutError) + extra


class AgentStopped(CoopmlError):
    """The node cannot go on (a permanent condition, explained in the message)."""


class WorkdirBusy(CoopmlError):
    """Another agent process holds this working directory."""


class WorkdirLock:
    """One agent per working directory (an advisory lock released by the OS when the process dies)."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / ".lock"
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(self._fd, 32).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise WorkdirBusy(f"working directory {workdir} is in use by another agent (pid {other}); "
                              "one workdir per node and task") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


class Waiter:
    """Sleeps between rounds: short right after progress; idle, the loop waits for chain activity up
    to `slowest` seconds, reading the block number at most `poll` seconds apart (one cheap call)."""

    def __init__(self, fastest: float = 0.1, slowest: float = 2.0, poll: float = 0.5) -> None:
        # poll: the longest gap between two block-number reads while waiting for the chain (one
        # cheap call; 2 s made every hop of a model's path wait up to 2 s after its block)
        self.fastest, self.slowest, self.poll = fastest, slowest, poll
        self.interval = fastest

    def wait(self, progressed: bool, sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = self.fastest if progressed else min(self.slowest, self.interval * 1.6)
        sleep(self.interval)


class Jobs:
    """Long computations (training, fusion, encrypted evaluation) off the event loop, one at a time,
    so the node keeps answering events and deadlines while it computes. With several `workers`:
    transactions nobody waits on in the loop (`Agent.sends`), each awaiting its own receipt."""

    def __init__(self, workers: int = 1, name: str = "coopml-job", on_done: Callable[[], None] | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._futures: dict[str, Future[Any]] = {}
        self._on_done = on_done      # called when any job ends: the idle loop wakes at once

    def submit(self, key: str, fn: Callable[[], Any]) -> None:
        if key not in self._futures:
            f = self._futures[key] = self._pool.submit(fn)
            on_done = self._on_done
            if on_done is not None:
                f.add_done_callback(lambda _: on_done())

    def running(self, key: str) -> bool:
        f = self._futures.get(key)
        return f is not None and not f.done()

    def busy(self) -> bool:
        return any(not f.done() for f in self._futures.values())

    def pop(self, key: str) -> Future[Any] | None:
        """The finished future for `key` (removed), or None while it runs / was never submitted."""
        f = self._futures.get(key)
        if f is None or not f.done():
            return None
        return self._futures.pop(key)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class InboxMessage(Fact):
    """A `Message` event addressed to this node, or a broadcast it took (the payload is in the
    store at `cid`)."""

    model_id: int
    sender: str
    kind: int
    cid: str
    broadcast: bool = False     # sent to `BROADCAST`: kept so an audit can see what a node let in


class Agent:
    role: ClassVar[Role]
    # the longest an idle node goes without a step when nothing it knows of is due: a safety net for
    # a condition no event or registered deadline announces. A role that overrides `wakes` and
    # registers its deadlines can afford a long one; the default (every 2 s, any event wakes) is
    # how every role behaved before.
    idle_step_s: ClassVar[float] = 2.0

    def __init__(self, *, client: TaskClient, store: Store, state: AgentState, workdir: Path,
                 log: EventLog | None = None, confirmations: int = 0, from_block: int = 0,
                 waiter: Waiter | None = None) -> None:
        self.client = client
        self.chain = client.chain
        self.address = client.account
        self.store = store
        self.state = state
        self.workdir = Path(workdir)
        self.log = log or EventLog(self.role)
        self.cursor = EventCursor(self.chain, client.address, state_path=self.workdir / "cursor.json",
                                  from_block=from_block, confirmations=confirmations)
        self.waiter = waiter or Waiter()
        # set when a job or a send ends: the loop, asleep until the chain moves, wakes at once
        self._job_ended = threading.Event()
        self._wake_block: int | None = None      # see wake_at
        self._wake_times: list[int] = []         # see wake_after
        self._wake_wall: float | None = None     # a retry's back-off ends (monotonic)
        self._step_due = True                    # the last step acted, failed, or never ran
        self._woken = False                      # an event since the last step that `wakes` this node
        self._last_step = 0.0                    # monotonic
        self._job_flag = threading.Event()       # a job or send ended since the last step
        self.jobs = Jobs(on_done=self._a_job_ended)
        # messages posted off the loop: on 1-second blocks, awaiting each receipt in turn made the
        # n-th of n answers (or requests) wait n blocks; now the next one is computed meanwhile
        self.sends = Jobs(workers=4, name="coopml-send", on_done=self._a_job_ended)
        self.done = False
        self.summary = ""   # the one human line a node ends with
        # set when the node stops (its loop ends, or close()): long jobs (training, a refit) ask it
        # and end early, so a stop asked for (SIGTERM, Ctrl-C) does not wait minutes for them
        self.stopping = threading.Event()
        self._transient = _transient_errors()

    def _a_job_ended(self) -> None:
        self._job_flag.set()        # the next round steps (it collects the result)
        self._job_ended.set()       # and the idle wait ends now

    # ------------------------------------------------------------------ to implement

    def on_event(self, ev: ChainEvent) -> None:
        """Record what an event tells this node (idempotent: events can be re-delivered)."""

    def wakes(self, ev: ChainEvent) -> bool:
        """Whether this event (already recorded by `on_event`) may make a step do something now. A
        message into this node's inbox always wakes it. Default: every event (a role overriding
        this must register, with `wake_at` / `wake_after`, every block and deadline it waits for)."""
        return True

    def step(self) -> bool:
        """Do whatever is due now, judged from chain state and local facts; True if anything happened."""
        return False

    # ------------------------------------------------------------------ loop

    def wake_at(self, block: int) -> None:
        """This round waits for block `block` although it may carry no event for this node (a draw
        allowed after it): the idle loop wakes when it is mined, not at its next timeout."""
        self._wake_block = block if self._wake_block is None else min(self._wake_block, block)

    def wake_after(self, *deadlines: int) -> None:
        """This round waits for chain time to pass these deadlines (a window closing, a margin before
        one): the idle loop steps once the latest block's timestamp is past the earliest of them.
        Zero (unset) deadlines are ignored."""
        self._wake_times.extend(int(d) for d in deadlines if d)

    def _wake_by(self, monotonic_t: float) -> None:
        """A retry's back-off ends at `monotonic_t`: the idle loop steps then."""
        self._wake_wall = monotonic_t if self._wake_wall is None else min(self._wake_wall, monotonic_t)

    def run_once(self, *, only_if_due: bool = False) -> bool:
        """One round: take the new events, then step — always (tests and drivers), or, as `run`
        does, `only_if_due` (see the module docstring). True if it acted."""
        return self._round(force=not only_if_due)

    def _due(self) -> bool:
        """Whether an idle round should step: see the module docstring."""
        if self._step_due or self._woken or self._job_flag.is_set():
            return True
        if time.monotonic() - self._last_step >= self.idle_step_s:
            return True
        if self._wake_wall is not None and time.monotonic() >= self._wake_wall:
            return True
        if self._wake_block is not None and self.cursor.next_block - 1 >= self._wake_block:
            return True                           # the head as of the drain above: no read
        # only deadlines still ahead at the last step were kept; chain time as of the drain: no read
        return bool(self._wake_times) and self._chain_time() > min(self._wake_times)

    def _chain_time(self) -> int:
        return self.cursor.head_time if self.cursor.head_time is not None else self.chain.now()

    def _round(self, force: bool = False) -> bool:
        try:
            n = self.cursor.drain(self._on_chain_event)
            if not force and not self._due():
                return False
            now = self._chain_time()
            self._wake_block, self._wake_times, self._wake_wall = None, [], None
            self._woken = False
            self._job_flag.clear()
            self._last_step = time.monotonic()
            self._step_due = True                 # stays set if the step raises: the next round retries
            progressed = self.step()
            self._step_due = progressed
            # keep only what is still ahead of this step (a role may re-register what it saw pass)
            self._wake_times = [d for d in self._wake_times if d >= now]
            if self._wake_block is not None and self._wake_block <= self.cursor.next_block - 1:
                self._wake_block = None
            return progressed or (force and n > 0)
        except ContractRevert as exc:
            if exc.name in PERMANENT_REVERTS:
                self.log(LogEvent.FAILED, error=exc.name, human=str(exc))
                raise AgentStopped(f"{self.role}: {exc}") from None
            self.log(LogEvent.REVERT, error=exc.name, detail=str(exc)[:200])
            return True
        except self._transient as exc:
            self.log(LogEvent.RETRY, error=type(exc).__name__, detail=str(exc)[:200])
            return False
        except ChainError as exc:   # a node that answers but fails a call: retry, it is not ours to judge
            self.log(LogEvent.RETRY, error=type(exc).__name__, detail=str(exc)[:200])
            return False

    def run(self, stop: Callable[[], bool] = lambda: False) -> str:
        """Run until the node's part of the task is over (or `stop()`); returns the human summary."""
        self.log(LogEvent.STARTED, address=self.address)
        t0 = time.monotonic()
        try:
            while not self.done and not stop():
                progressed = self.run_once(only_if_due=True)
                if self.done:
                    break
                if progressed:
                    self.waiter.wait(True)
                else:
                    # nothing to do: sleep until a new block is mined (its events are read next
                    # round; a step follows only if one is due) or a job or send ends (before, a
                    # busy job meant a full round of contract reads every 0.1 s, e.g. through all of
                    # training, on the cores the training needed). With pushed heads the wait
                    # reads nothing; else it polls at most `Waiter.poll` apart, so a node reacts
                    # within a fraction of a block
                    try:
                        self.cursor.wait_for_block(self.waiter.slowest, max_interval=self.waiter.poll,
                                                   wake=self._job_ended)
                    except self._transient:
                        self.waiter.wait(False)
        finally:
            self.stopping.set()
            self.sends.shutdown()
            self.jobs.shutdown()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            self.log(LogEvent.RESOURCES, cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
                     loop_wall_s=round(time.monotonic() - t0, 2), max_rss_mb=round(usage.ru_maxrss / 1024, 1))
        return self.summary

    def _on_chain_event(self, ev: ChainEvent) -> None:
        try:
            to = ev.args.get("to")
            inboxed = False
            if ev.name == "Message" and (to == self.address or (to == BROADCAST and self.takes_broadcast(ev.args))):
                a = ev.args
                self.state.add("inbox", f"{ev.block_number}:{ev.log_index}",
                               InboxMessage(model_id=int(a["modelId"]), sender=a["sender"], kind=int(a["kind"]),
                                            cid=a["cid"], broadcast=to == BROADCAST))
                inboxed = True
            self.on_event(ev)
            if inboxed or self.wakes(ev):
                self._woken = True
        except self._transient:
            raise
        except Exception as exc:  # noqa: BLE001 - a poison event must not stop the node
            self.log(LogEvent.DECISION, outcome=Outcome.IGNORED, item=f"event:{ev.name}@{ev.block_number}",
                     reason=f"{type(exc).__name__}: {exc}"[:300])

    def takes_broadcast(self, message: Mapping[str, Any]) -> bool:
        """Whether a message to nobody in particular (`to` = the zero address; every node sees it)
        goes into this node's inbox. Only what the role expects from that sender right now: one
        transaction must not fill every node's inbox."""
        return False

    # ------------------------------------------------------------------ items others control

    def handle(self, item: str, fn: Callable[[], Decision | None], *, model: int | None = None,
               deadline: int | None = None) -> Decision | None:
        """Handle one item at most once: `fn` returns the Decision (None = not ready yet, try later).
        Transient failures retry with back-off until `deadline` (chain time) has passed."""
        known = self.state.decision(item)
        if known is not None:
            return known
        att = self.state.attempts(item)
        if time.monotonic() < att.next_at:
            self._wake_by(att.next_at)
            return None
        try:
            decision = fn()
        except self._transient as exc:
            if deadline is not None and self.chain.now() > deadline:
                decision = Decision(outcome=Outcome.EXPIRED, reason=f"still failing at the deadline: {exc}"[:300])
            else:
                att.count += 1
                att.last_error = f"{type(exc).__name__}: {exc}"[:300]
                att.next_at = time.monotonic() + min(30.0, 0.5 * 2 ** min(att.count, 6))
                self._wake_by(att.next_at)
                self.log(LogEvent.RETRY, model=model, item=item, error=att.last_error)
                return None
        except ContractRevert:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever another party sent, we decide and move on
            reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, CoopmlError) else \
                f"internal error {type(exc).__name__}: {exc} @ {traceback.extract_tb(exc.__traceback__)[-1].name}"
            decision = Decision(outcome=Outcome.REJECTED, reason=reason[:400])
        if decision is None:
            return None
        decision = decision.model_copy(update={"chain_time": self.chain.now()})
        self.state.decide(item, decision)
        self.log(LogEvent.DECISION, model=model, item=item, outcome=decision.outcome, reason=decision.reason)
        return decision

    def inbox(self) -> dict[str, InboxMessage]:
        """Messages to this node without a decision yet."""
        return {i: m for i, m in self.state.facts("inbox", InboxMessage).items()
                if self.state.decision(f"inbox:{i}") is None}

    def sweep_inbox(self, relevant: Callable[[InboxMessage], bool]) -> None:
        """Record IGNORED for every undecided message this node has no use for (a kind it does not
        take, a model it has nothing to do with, a stage that is over): every message ends with a
        recorded decision."""
        for ident, msg in self.inbox().items():
            if not relevant(msg):
                self.state.decide(f"inbox:{ident}", Decision(outcome=Outcome.IGNORED, chain_time=self.now(),
                                  reason=f"kind {msg.kind} about model {msg.model_id} from {msg.sender}: not expected"))
                self.log(LogEvent.DECISION, model=msg.model_id, item=f"inbox:{ident}", outcome=Outcome.IGNORED,
                         reason="not expected")

    # ------------------------------------------------------------------ secrets

    def secret_path(self, name: str) -> Path:
        """Where this node keeps a secret: owner-only directory and file modes, never uploaded or logged."""
        d = self.workdir / "secret"
        d.mkdir(mode=0o700, exist_ok=True)
        return d / name

    def write_secret(self, name: str, data: bytes) -> Path:
        return write_private(self.secret_path(name), data, durable=True)

    def read_secret(self, name: str) -> bytes | None:
        path = self.secret_path(name)
        return path.read_bytes() if path.is_file() else None

    def box_key(self, name: str) -> BoxKeyPair:
        """This node's X25519 key pair kept as secret `name`: made on first use, the same one after
        a restart (what others sealed to its public half must stay readable)."""
        data = self.read_secret(name)
        if data is None:
            data = BoxKeyPair.generate().private_bytes()
            self.write_secret(name, data)
        return BoxKeyPair.from_bytes(data)

    @staticmethod
    def node_args(cfg: NodeConfig) -> dict[str, Any]:
        """The base agent's arguments a role's node config carries."""
        return {"workdir": cfg.workdir, "confirmations": cfg.confirmations, "from_block": cfg.from_block}

    # ------------------------------------------------------------------ helpers

    def finish(self, summary: str, **fields: Any) -> bool:
        """This node's part of the task is over: withdraw what the contract owes it, keep `summary`
        (the one human line it ends with) and log DONE (with `fields`). True: it acted."""
        self.withdraw_owed()
        self.summary = summary
        self.done = True
        self.log(LogEvent.DONE, human=summary, **fields)
        return True

    def withdraw_owed(self) -> bool:
        """Take what the contract owes this node now; True if there was something to take."""
        if not self.client.owed(self.address):
            return False
        self.log(LogEvent.WITHDRAWN, wei=self.client.withdraw())
        return True

    def now(self) -> int:
        """Chain time: the latest block's timestamp (every deadline is judged against it)."""
        return self.chain.now()

    def fetch(self, cid: str) -> bytes:
        """Content from the store (verified against its CID by the store); transient if absent."""
        return self.store.get(cid)

    def close(self) -> None:
        self.stopping.set()
        self.sends.shutdown()
        self.jobs.shutdown()
        self.state.close()


__all__ = [
    "PERMANENT_REVERTS",
    "Agent",
    "AgentStopped",
    "InboxMessage",
    "Jobs",
    "StorageError",
    "Waiter",
    "WorkdirBusy",
    "WorkdirLock",
]
