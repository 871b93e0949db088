"""The exchange of the blocks ALS engine's barrier mode (``als.exchange = "barrier"``): a relay on
the driver that gathers each half-iteration's solved rows from every task and sends the whole side
back to each.

Why a relay of our own: in the broadcast mode every half-iteration is a Spark job, and on 2 cores a
job costs 0.11-0.15 s of scheduling whatever it computes, while solving the demo's 580k pairs takes
about 0.07 s a half-iteration. In barrier mode the whole fit is one barrier stage: its tasks all
run at once, each keeps its blocks in memory, and the half-iterations meet here instead of in the
scheduler. Spark's own ``BarrierTaskContext.allGather`` took 1.0 s a call on Spark 4.2 (two tasks,
local mode, any message size), so the meeting is a TCP socket. The barrier is what makes it safe:
a barrier stage runs all of its tasks at once or none, so no task waits for a partner that was
never scheduled.

Failure: Spark runs a barrier stage again, whole, when any of its tasks fails. The relay keeps
both sides' factors as of the last half-iteration every task completed, and the new attempt's
tasks resume from there. The solves are deterministic, so a fit that lost a task ends with the
factors of one that did not. A connection must present the fit's random token, so nothing else on the
network can feed the fit.

Wire format: frames of an 8-byte big-endian length and a payload; a message is a JSON header frame
and the raw bytes of the numpy arrays it announces.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["FactorRelay", "RelayAddress", "RelayClient", "RelayError"]

_LENGTH = struct.Struct("!Q")
#: The two sides, in the order the half-iterations solve them: half h solves SIDES[h % 2].
SIDES = ("user", "item")


class RelayError(RuntimeError):
    """The exchange failed: a refused token, a superseded task, a protocol error or a timeout."""


@dataclass(frozen=True)
class RelayAddress:
    """What a task needs to reach the relay: its address and the fit's token."""

    host: str
    port: int
    token: str
    timeout_s: float


def _send(sock: socket.socket, header: dict[str, Any], *arrays: np.ndarray) -> None:
    frames = [json.dumps(header).encode(), *(np.ascontiguousarray(a).tobytes() for a in arrays)]
    sock.sendall(b"".join(_LENGTH.pack(len(f)) + f for f in frames))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise RelayError("the connection closed mid-message")
        got += k
    return bytes(buf)


def _recv_frame(sock: socket.socket) -> bytes:
    (n,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    return _recv_exact(sock, n)


def _recv_header(sock: socket.socket) -> dict[str, Any]:
    return json.loads(_recv_frame(sock))


class FactorRelay:
    """The driver's side: both sides' factors, advanced one half-iteration at a time by the parts
    every task sends. Use as a context manager; :attr:`factors` holds the result afterwards.

    Args:
        tasks: how many tasks every half-iteration waits for.
        sizes: rows of each side's factor matrix (``{"user": n, "item": m}``).
        rank: columns of both.
        halves: half-iterations of the fit (2 x als.max_iter).
        items: the initial item factors (users start unset: the first half solves them from zero).
        bind: the interface to listen on; ``host``: the name tasks connect to.
        timeout_s: how long a task waits for the others' parts (or the relay for a task) before
            the exchange fails; a dead task fails its stage long before that.
    """

    def __init__(
        self,
        tasks: int,
        sizes: dict[str, int],
        rank: int,
        halves: int,
        items: np.ndarray,
        bind: str = "127.0.0.1",
        host: str | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        self.tasks, self.rank, self.halves, self.timeout_s = tasks, rank, halves, timeout_s
        self.factors: dict[str, np.ndarray | None] = {"user": None, "item": items.astype(np.float32)}
        self.sizes = dict(sizes)
        #: half-iterations every task has completed (the next one to solve)
        self.done = 0
        #: connections from a task that had connected before: reruns after a failure
        self.reconnects = 0
        self._connected: set[int] = set()
        self._closed = False
        self._parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cond = threading.Condition()
        self._token = secrets.token_hex(16)
        self._started = time.perf_counter()
        relay = self

        class _Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                relay._serve(self.request)

        class _Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = _Server((bind, 0), _Handler)
        self.address = RelayAddress(host or bind, self._server.server_address[1], self._token, timeout_s)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="als-relay", daemon=True
        )

    def __enter__(self) -> FactorRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._cond:
            self._closed = True  # release any task still waiting
            self._cond.notify_all()

    # -- the driver's side of one connection ------------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(self.timeout_s)
        try:
            hello = _recv_header(sock)
            if not hmac.compare_digest(str(hello.get("token", "")), self._token):
                log.warning("ALS relay: refused a connection without the fit's token")
                _send(sock, {"error": "refused: wrong token"})
                return
            task, attempt = int(hello["task"]), int(hello["attempt"])
            with self._cond:
                if task in self._connected:
                    self.reconnects += 1
                    log.warning(
                        "ALS relay: task %d connected again (task attempt %d); resuming after half-iteration %d/%d",
                        task,
                        attempt,
                        self.done,
                        self.halves,
                    )
                self._connected.add(task)
                have = [s for s in SIDES if self.factors[s] is not None]
                state = {"done": self.done, "rank": self.rank, "have": have}
                arrays = [self.factors[s] for s in have]
            _send(sock, state, *arrays)
            while True:
                try:
                    header = _recv_header(sock)
                except RelayError:
                    return  # the task finished (or died): nothing more to read
                rows = np.frombuffer(_recv_frame(sock), np.int32)
                solved = np.frombuffer(_recv_frame(sock), np.float32).reshape(len(rows), self.rank)
                reply = self._submit(task, int(header["half"]), rows, solved)
                if isinstance(reply, str):
                    _send(sock, {"error": reply})
                    return
                _send(sock, {"half": int(header["half"])}, reply)
        except (OSError, RelayError, ValueError, KeyError) as exc:
            log.warning("ALS relay: a task's connection failed: %s", exc)
        finally:
            sock.close()

    def _submit(self, task: int, half: int, rows: np.ndarray, solved: np.ndarray) -> np.ndarray | str:
        """Record a task's part of ``half``; the side once every task's part is in, or why not.

        Parts are kept by task, not by stage attempt (Python tasks cannot see their stage's
        attempt number): a rerun task sends the very part its failed predecessor sent or would
        have sent, so a part may replace another, and a late part of a completed half is refused.
        """
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            if half < self.done:
                return f"half-iteration {half} is complete already (task {task} was superseded)"
            if half > self.done:
                return f"task {task} sent half-iteration {half}, the relay expects {self.done}"
            self._parts[task] = (rows, solved)
            if len(self._parts) == self.tasks:
                self._complete(half)
            while self.done <= half:
                if self._closed:
                    return "the fit ended"
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"timed out after {self.timeout_s:g}s waiting for the other tasks' half-iteration {half}"
                self._cond.wait(left)
            side = self.factors[SIDES[half % 2]]
            assert side is not None
            return side

    def _complete(self, half: int) -> None:
        side = SIDES[half % 2]
        previous = self.factors[side]
        out = np.zeros((self.sizes[side], self.rank), np.float32) if previous is None else previous.copy()
        for rows, solved in self._parts.values():
            out[rows] = solved
        self.factors[side] = out
        self._parts = {}
        self.done = half + 1
        if side == "item":
            log.info(
                "ALS blocks (barrier): iteration %d/%d at %.2fs",
                self.done // 2,
                self.halves // 2,
                time.perf_counter() - self._started,
            )
        self._cond.notify_all()


class RelayClient:
    """A task's side: ``connect`` once, then ``swap`` its solved rows for the whole side, once a
    half-iteration."""

    def __init__(self, address: RelayAddress, task: int, attempt: int) -> None:
        # the relay bounds every wait by timeout_s and answers; this only bounds a dead relay
        wait = 2 * address.timeout_s + 10
        try:
            self.sock = socket.create_connection((address.host, address.port), timeout=wait)
        except OSError as exc:
            raise RelayError(
                f"task {task} cannot reach the ALS relay on the driver at {address.host}:{address.port} ({exc}); "
                'let executors connect to the driver on any port, or set als.exchange = "broadcast"'
            ) from exc
        self.sock.settimeout(wait)
        _send(self.sock, {"token": address.token, "attempt": attempt, "task": task})
        state = self._reply()
        self.done: int = state["done"]
        #: each side's factors as the relay holds them (users are None before the first half)
        self.factors: dict[str, np.ndarray | None] = {"user": None, "item": None}
        for side in state["have"]:
            self.factors[side] = self._matrix().reshape(-1, state["rank"])

    def _reply(self) -> dict[str, Any]:
        header = _recv_header(self.sock)
        if "error" in header:
            raise RelayError(f"ALS relay: {header['error']}")
        return header

    def _matrix(self) -> np.ndarray:
        return np.frombuffer(_recv_frame(self.sock), np.float32)

    def swap(self, half: int, rows: np.ndarray, solved: np.ndarray) -> np.ndarray:
        """Send this task's ``rows`` of half-iteration ``half`` and their factors; the side's whole
        (rows, rank) matrix once every task has sent its part."""
        _send(self.sock, {"half": half}, rows.astype(np.int32), solved.astype(np.float32))
        self._reply()
        side = self._matrix().reshape(-1, solved.shape[1])
        self.factors[SIDES[half % 2]] = side
        return side

    def close(self) -> None:
        self.sock.close()
