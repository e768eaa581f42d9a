"""A userspace delay line: the testbed's stand-in for `tc netem delay` (not built into this kernel).

It sits between two interfaces of a node's "wire" namespace (the node's own veth on one side, the
link to the switch on the other), reads every Ethernet frame from each with an AF_PACKET socket,
holds it for `delay` seconds and writes it to the other side, preserving order. It is protocol
blind (ARP, TCP, UDP, anything), so every byte a node sends or receives is delayed, like a long
cable. Rate limiting is left to tc (tbf) on the veths: this process only adds propagation delay.

A frame the other side refuses (link down, qdisc full) is dropped and counted, as a cable would
lose it; the sender's TCP retransmits. Only the standard library is used so the relay starts in
milliseconds; `python -m coopml.testbed.relay IF_A IF_B DELAY_MS` runs it until SIGTERM.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_IGNORE_OUTGOING = 23          # Linux >= 4.20: our own transmissions are not read back
MAX_FRAME = 65_535
BATCH = 256                          # frames read from one socket before looking at the other


@dataclass
class Direction:
    """Frames read from `src`, waiting to be written to `dst`."""

    name: str
    src: socket.socket
    dst: socket.socket
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    frames: int = 0
    bytes: int = 0
    dropped: int = 0


def open_port(ifname: str, rcvbuf: int = 4 << 20) -> socket.socket:
    """A raw AF_PACKET socket on `ifname`, promiscuous, non-blocking, not seeing its own sends."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
    s.bind((ifname, ETH_P_ALL))
    ifindex = socket.if_nametoindex(ifname)
    mreq = ifindex.to_bytes(4, sys.byteorder) + PACKET_MR_PROMISC.to_bytes(2, sys.byteorder) + bytes(10)
    s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.setblocking(False)
    return s


class DelayLine:
    """Two interfaces joined with a fixed one-way delay in each direction."""

    def __init__(self, if_a: str, if_b: str, delay_s: float) -> None:
        if delay_s < 0:
            raise ValueError(f"delay must be >= 0, got {delay_s}")
        self.delay = delay_s
        a, b = open_port(if_a), open_port(if_b)
        self.dirs = [Direction(f"{if_a}->{if_b}", a, b), Direction(f"{if_b}->{if_a}", b, a)]
        self.by_fd = {d.src.fileno(): d for d in self.dirs}
        self.running = True

    def _read(self, d: Direction, now: float) -> None:
        release = now + self.delay
        for _ in range(BATCH):
            try:
                frame = d.src.recv(MAX_FRAME)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.ENETDOWN, errno.ENXIO, errno.EINTR):
                    return   # our side of the link went down: nothing to read until it is back
                raise
            d.queue.append((release, frame))

    def _flush(self, d: Direction, now: float) -> None:
        q = d.queue
        while q and q[0][0] <= now:
            _, frame = q.popleft()
            try:
                d.dst.send(frame)
                d.frames += 1
                d.bytes += len(frame)
            except BlockingIOError:
                q.appendleft((now, frame))   # the socket buffer is full: retry on the next turn
                return
            except OSError:
                d.dropped += 1               # link down, qdisc full, frame too large: lost on the wire

    def run(self) -> None:
        poller = select.epoll()
        for fd in self.by_fd:
            poller.register(fd, select.EPOLLIN)
        while self.running:
            now = time.monotonic()
            heads = [d.queue[0][0] for d in self.dirs if d.queue]
            timeout = max(0.0, min(heads) - now) if heads else 1.0
            for fd, _ in poller.poll(timeout):
                self._read(self.by_fd[fd], time.monotonic())
            now = time.monotonic()
            for d in self.dirs:
                self._flush(d, now)
        poller.close()

    def stats(self) -> dict[str, dict[str, int]]:
        return {d.name: {"frames": d.frames, "bytes": d.bytes, "dropped": d.dropped, "queued": len(d.queue)}
                for d in self.dirs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m coopml.testbed.relay", description=__doc__.split("\n")[0])
    p.add_argument("if_a")
    p.add_argument("if_b")
    p.add_argument("delay_ms", type=float, help="one-way delay added in each direction (ms)")
    p.add_argument("--stats", help="write frame/byte/drop counts here (JSON) on exit")
    args = p.parse_args(argv)
    line = DelayLine(args.if_a, args.if_b, args.delay_ms / 1000.0)

    def stop(*_: object) -> None:
        line.running = False
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"relay {args.if_a} <-> {args.if_b}: {args.delay_ms} ms each way (pid {os.getpid()})", flush=True)
    try:
        line.run()
    finally:
        if args.stats:
            with open(args.stats, "w") as f:
                json.dump(line.stats(), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

