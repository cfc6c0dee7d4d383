"""The calibrate step's background threads: order kept, bounded, errors raised in the caller."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from drpaiq_core.background import OrderedWorker, Prefetch


def test_prefetch_yields_every_item_in_order_from_another_thread() -> None:
    threads: set[str] = set()

    def source() -> Iterator[int]:
        for i in range(200):
            threads.add(threading.current_thread().name)
            yield i

    with Prefetch(source(), depth=3) as items:
        assert list(items) == list(range(200))
    assert threads == {"drpaiq-prefetch"}


def test_prefetch_reads_at_most_depth_items_ahead() -> None:
    produced: list[int] = []

    def source() -> Iterator[int]:
        for i in range(100):
            produced.append(i)
            yield i

    with Prefetch(source(), depth=4) as items:
        iterator = iter(items)
        assert next(iterator) == 0
        time.sleep(0.3)
        # One handed out, four queued, one more held by the blocked thread.
        assert len(produced) <= 6


def test_prefetch_holds_at_most_max_bytes_ahead_but_always_one_item() -> None:
    produced: list[int] = []

    def source() -> Iterator[bytes]:
        for size in (10, 10, 10, 10, 500, 10, 10):
            produced.append(size)
            yield b"x" * size

    with Prefetch(source(), depth=100, max_bytes=25, size=len) as items:
        iterator = iter(items)
        time.sleep(0.3)
        # 10 + 10 reach 25 with the third: three held, the fourth waits in the thread.
        assert len(produced) == 4
        assert [len(next(iterator)) for _ in range(5)] == [10, 10, 10, 10, 500]
        # The 500-byte item alone exceeds the budget and still went through.
        assert [len(item) for item in iterator] == [10, 10]


def test_prefetch_raises_the_source_error_in_the_consumer() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise ValueError("bad image 7.png")

    with Prefetch(source()) as items:
        iterator = iter(items)
        assert next(iterator) == 1
        with pytest.raises(ValueError, match=r"bad image 7\.png"):
            next(iterator)


def test_leaving_prefetch_early_closes_the_source() -> None:
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from range(10_000)
        finally:
            closed.set()

    with Prefetch(source(), depth=2) as items:
        for item in items:
            if item == 3:
                break
    assert closed.wait(2.0)


def test_worker_handles_items_in_order_and_finishes_them_all() -> None:
    seen: list[int] = []

    def handle(item: int) -> None:
        if item % 7 == 0:
            time.sleep(0.001)
        seen.append(item)

    with OrderedWorker(handle, depth=2) as worker:
        for i in range(300):
            worker.submit(i)
    assert seen == list(range(300))


def test_worker_error_is_raised_in_the_submitting_thread() -> None:
    def handle(item: int) -> None:
        if item == 5:
            raise RuntimeError("fold failed at 5")

    with (
        pytest.raises(RuntimeError, match="fold failed at 5"),
        OrderedWorker(handle, depth=1) as worker,
    ):
        for i in range(1000):
            worker.submit(i)


def test_worker_error_on_the_last_item_is_raised_on_exit() -> None:
    def handle(item: int) -> None:
        raise KeyError(item)

    with pytest.raises(KeyError), OrderedWorker(handle) as worker:
        worker.submit(1)


def test_worker_abort_drops_waiting_items() -> None:
    seen: list[int] = []
    started = threading.Event()

    def handle(item: int) -> None:
        started.set()
        time.sleep(0.3)  # still busy with item 0 when the abort comes
        seen.append(item)

    with pytest.raises(KeyboardInterrupt), OrderedWorker(handle, depth=3) as worker:
        for i in range(3):
            worker.submit(i)
        assert started.wait(2.0)
        raise KeyboardInterrupt
    # The item in hand completes; the waiting ones are dropped.
    assert seen == [0]
