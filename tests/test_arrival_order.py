"""The service's in-order queue of inline lookups (serving/arrival_order.py)."""

from __future__ import annotations

import asyncio

import pytest

from recsys_spark.serving.arrival_order import ArrivalOrder


def test_calls_run_one_at_a_time_in_the_order_they_were_queued() -> None:
    log: list[str] = []

    async def main() -> list[int]:
        order = ArrivalOrder()

        def call(i: int) -> int:
            log.append(f"start {i}")
            log.append(f"end {i}")
            return i * 10

        return list(await asyncio.gather(*(order.run(call, i) for i in range(5))))

    assert asyncio.run(main()) == [0, 10, 20, 30, 40]
    assert log == [f"{what} {i}" for i in range(5) for what in ("start", "end")]


def test_the_loop_runs_its_other_ready_work_between_two_queued_calls() -> None:
    """What puts requests in arrival order: a socket read (here, any callback made ready during a
    call) happens before the next queued call, not after the whole queue."""
    log: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        order = ArrivalOrder()

        def call(i: int) -> None:
            log.append(f"call {i}")
            loop.call_soon(log.append, f"ready after {i}")

        await asyncio.gather(*(order.run(call, i) for i in range(3)))

    asyncio.run(main())
    assert log == ["call 0", "ready after 0", "call 1", "ready after 1", "call 2", "ready after 2"]


def test_a_failing_call_raises_in_its_own_caller_and_the_queue_goes_on() -> None:
    async def main() -> list[object]:
        order = ArrivalOrder()

        def call(i: int) -> int:
            if i == 1:
                raise ValueError("row 1 is bad")
            return i

        return list(await asyncio.gather(*(order.run(call, i) for i in range(3)), return_exceptions=True))

    first, second, third = asyncio.run(main())
    assert (first, third) == (0, 2)
    assert isinstance(second, ValueError) and str(second) == "row 1 is bad"


def test_a_call_whose_caller_was_cancelled_while_it_waited_is_skipped() -> None:
    ran: list[int] = []

    async def main() -> None:
        order = ArrivalOrder()
        tasks = [asyncio.create_task(order.run(ran.append, i)) for i in range(3)]
        await asyncio.sleep(0)  # every call is queued
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert tasks[1].cancelled()

    asyncio.run(main())
    assert ran == [0, 2]


def test_the_queue_serves_again_after_it_ran_empty() -> None:
    async def main() -> tuple[int, int]:
        order = ArrivalOrder()
        first = await order.run(len, "abc")
        await asyncio.sleep(0)
        return first, await order.run(len, "abcdef")

    assert asyncio.run(main()) == (3, 6)


@pytest.mark.parametrize("n", [1, 50])
def test_every_caller_gets_its_own_result(n: int) -> None:
    async def main() -> list[int]:
        order = ArrivalOrder()
        return list(await asyncio.gather(*(order.run(pow, i, 2) for i in range(n))))

    assert asyncio.run(main()) == [i * i for i in range(n)]
