"""The relay of the blocks engine's barrier exchange (:mod:`recsys_spark.models.factor_relay`),
driven by threads that stand in for Spark tasks: every half-iteration gathers each task's rows,
a task that dies and is run again resumes where the others are, and nothing without the fit's
token gets in. All connections are on loopback, each bounded by a timeout."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from recsys_spark.models.factor_relay import SIDES, FactorRelay, RelayClient, RelayError

RANK, SIZES, HALVES, TASKS = 3, {"user": 5, "item": 4}, 6, 2


def _rows(task: int, side: str) -> np.ndarray:
    """Task t owns the rows congruent to t modulo the task count, as the engine's blocks."""
    return np.arange(task, SIZES[side], TASKS, dtype=np.int32)


def _solve(half: int, rows: np.ndarray, fixed: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """A deterministic stand-in for a block's solve that depends on the fixed side and the warm start."""
    start = np.zeros((len(rows), RANK), np.float32) if previous is None else previous[rows]
    return (0.5 * start + 0.1 * fixed.sum(axis=0) + rows[:, None] + half).astype(np.float32)


def _task(relay: FactorRelay, task: int, stop_after: int | None = None, out: list | None = None) -> None:
    client = RelayClient(relay.address, task, attempt=task)
    try:
        for half in range(client.done, HALVES):
            side, other = SIDES[half % 2], SIDES[1 - half % 2]
            fixed = client.factors[other]
            assert fixed is not None
            rows = _rows(task, side)
            solved = _solve(half, rows, fixed, client.factors[side])
            if stop_after is not None and half == stop_after:
                from recsys_spark.models import factor_relay

                # dies after sending its part, before the side comes back
                factor_relay._send(client.sock, {"half": half}, rows, solved)
                return
            client.swap(half, rows, solved)
    except RelayError as exc:
        if out is not None:
            out.append(str(exc))
    finally:
        client.close()


def _relay() -> FactorRelay:
    items = np.arange(SIZES["item"] * RANK, dtype=np.float32).reshape(SIZES["item"], RANK) / 10
    return FactorRelay(TASKS, SIZES, RANK, HALVES, items, timeout_s=20.0)


def _run(*targets: tuple) -> None:
    threads = [threading.Thread(target=_task, args=args) for args in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a task hung on the relay"


def _reference() -> dict[str, np.ndarray]:
    """The same halves computed in one process, every task's part applied in turn."""
    relay = _relay()
    factors: dict[str, np.ndarray | None] = {"user": None, "item": relay.factors["item"]}
    relay._server.server_close()
    for half in range(HALVES):
        side, other = SIDES[half % 2], SIDES[1 - half % 2]
        before = factors[side]
        out = np.zeros((SIZES[side], RANK), np.float32) if before is None else before.copy()
        for task in range(TASKS):
            rows = _rows(task, side)
            out[rows] = _solve(half, rows, factors[other], before)  # type: ignore[arg-type]
        factors[side] = out
    return {s: f for s, f in factors.items() if f is not None}


def test_every_half_iteration_gathers_each_tasks_rows_into_the_whole_side() -> None:
    expected = _reference()
    with _relay() as relay:
        _run(*[(relay, t) for t in range(TASKS)])
    assert relay.done == HALVES and relay.reconnects == 0
    for side in SIDES:
        np.testing.assert_array_equal(relay.factors[side], expected[side])


def test_a_task_that_dies_mid_fit_and_runs_again_resumes_and_the_fit_ends_the_same() -> None:
    expected = _reference()
    with _relay() as relay:
        # task 1 sends its part of half 2 and dies; task 0 goes on to wait for half 3; the rerun
        # of task 1 connects, is told where the halves stand, and catches up
        dying = threading.Thread(target=_task, args=(relay, 1, 2))
        survivor = threading.Thread(target=_task, args=(relay, 0))
        dying.start()
        survivor.start()
        dying.join(timeout=30)
        _run((relay, 1))
        survivor.join(timeout=30)
        assert not survivor.is_alive()
    assert relay.done == HALVES and relay.reconnects == 1
    for side in SIDES:
        np.testing.assert_array_equal(relay.factors[side], expected[side])


def test_a_part_of_a_completed_half_iteration_is_refused_as_superseded() -> None:
    with _relay() as relay:
        _run(*[(relay, t) for t in range(TASKS)])
        client = RelayClient(relay.address, 0, attempt=9)
        assert client.done == HALVES
        with pytest.raises(RelayError, match=r"half-iteration 1 is complete already \(task 0 was superseded\)"):
            client.swap(1, _rows(0, "item"), np.zeros((2, RANK), np.float32))
        client.close()


def test_a_connection_without_the_fits_token_is_refused_and_changes_nothing() -> None:
    with _relay() as relay:
        with pytest.raises(RelayError, match="refused: wrong token"):
            RelayClient(replace(relay.address, token="0" * 32), 0, attempt=0)
        assert relay.done == 0 and relay.factors["user"] is None and relay.reconnects == 0


def test_a_task_waiting_for_a_partner_that_never_comes_times_out_with_the_half_it_waited_for() -> None:
    errors: list[str] = []
    items = np.zeros((SIZES["item"], RANK), np.float32)
    with FactorRelay(TASKS, SIZES, RANK, HALVES, items, timeout_s=0.5) as relay:
        _run((relay, 0, None, errors))
    assert errors == ["ALS relay: timed out after 0.5s waiting for the other tasks' half-iteration 0"]


def test_a_task_that_cannot_reach_the_relay_is_told_where_it_looked_and_what_to_set() -> None:
    relay = _relay()
    address = relay.address
    relay._server.server_close()  # nothing listens on the port any more
    where = r"cannot reach the ALS relay on the driver at 127\.0\.0\.1:\d+ "
    with pytest.raises(RelayError, match=where + r'.*als\.exchange = "broadcast"'):
        RelayClient(address, 3, attempt=0)
