"""Two small background threads that let the calibrate step overlap its three kinds of work.

Calibration reads and decodes images (mostly Python and Pillow), runs ONNX Runtime
(native code, several threads) and folds the outputs into statistics (NumPy, which
releases the GIL in its loops). Run one after the other, each leaves cores idle; with
:class:`Prefetch` reading ahead and :class:`OrderedWorker` folding behind, all three run at
once. Both keep a small, fixed number of items in flight, so memory stays flat, and both
keep the order of the items, so the results are the same as a serial run, bit for bit.

An exception in a background thread is raised again in the caller's thread, with its
own type and traceback, at the next hand-over.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

#: How long a blocked hand-over waits before it checks whether the other side gave up.
_POLL_S = 0.05


class Prefetch(Generic[T]):
    """Iterate ``source`` in a background thread, at most ``depth`` items and (when
    ``size`` is given) ``max_bytes`` ahead; one item is always allowed, whatever its size.

    Use as a context manager; leaving it early (an error, Ctrl-C) stops the thread and
    closes ``source`` if it is a generator.

    :param size: the bytes an item holds (for the ``max_bytes`` bound).
    """

    def __init__(
        self,
        source: Iterable[T],
        depth: int = 4,
        *,
        max_bytes: int | None = None,
        size: Callable[[T], int] | None = None,
        name: str = "drpaiq-prefetch",
    ) -> None:
        self._items: deque[tuple[str, object, int]] = deque()
        self._held = 0
        self._depth = max(1, depth)
        self._max_bytes = max_bytes
        self._size = size
        self._changed = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(
            target=self._fill, args=(iter(source),), name=name, daemon=True
        )
        self._thread.start()

    def _fill(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                weight = self._size(item) if self._size is not None else 0
                if not self._put("item", item, weight):
                    break
            else:
                self._put("end", None, 0)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put("error", exc, 0)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _full(self) -> bool:
        if not self._items:
            return False
        if len(self._items) >= self._depth:
            return True
        return self._max_bytes is not None and self._held >= self._max_bytes

    def _put(self, kind: str, payload: object, weight: int) -> bool:
        with self._changed:
            while self._full() and not self._stop:
                self._changed.wait()
            if self._stop:
                return False
            self._items.append((kind, payload, weight))
            self._held += weight
            self._changed.notify_all()
            return True

    def __iter__(self) -> Iterator[T]:
        while True:
            with self._changed:
                while not self._items:
                    self._changed.wait()
                kind, payload, weight = self._items.popleft()
                self._held -= weight
                self._changed.notify_all()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(payload, BaseException)
                raise payload
            yield payload  # type: ignore[misc]

    def close(self) -> None:
        """Stop reading ahead and wait for the thread to end."""
        with self._changed:
            self._stop = True
            self._items.clear()
            self._changed.notify_all()
        self._thread.join()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OrderedWorker(Generic[T]):
    """Call ``handle(item)`` for every submitted item, in submission order, in one
    background thread, with at most ``depth`` items waiting.

    Use as a context manager: a normal exit waits until every item is handled and raises
    the first error of ``handle``; an exit by exception drops the waiting items.
    """

    def __init__(
        self, handle: Callable[[T], None], depth: int = 2, name: str = "drpaiq-worker"
    ) -> None:
        self._handle = handle
        self._queue: queue.Queue[tuple[bool, T | None]] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name=name, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                more, item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if not more:
                return
            if self._error is not None or self._stop.is_set():
                continue  # keep emptying the queue so submit() never blocks for ever
            try:
                self._handle(item)  # type: ignore[arg-type]
            except BaseException as exc:  # raised again in the submitting thread
                self._error = exc

    def submit(self, item: T) -> None:
        """Queue ``item``; blocks while ``depth`` items wait. Raises the worker's error,
        if it had one, instead of queueing more."""
        while True:
            self._raise_error()
            try:
                self._queue.put((True, item), timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._stop.set()
            raise error

    def finish(self) -> None:
        """Wait until every submitted item is handled; raise the first error, if any."""
        while self._thread.is_alive():
            try:
                self._queue.put((False, None), timeout=_POLL_S)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._raise_error()

    def abort(self) -> None:
        """Drop the waiting items and stop the thread (the item in hand completes)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> OrderedWorker[T]:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()
