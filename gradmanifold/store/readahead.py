"""Work run ahead of its consumer on a few threads, in order, and stopped cleanly when the consumer stops."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_ahead(
    items: Iterable[T], task: Callable[[T], R], depth: int, threads: int
) -> Generator[tuple[T, Future[R]], None, None]:
    """(item, the future of task(item)) for each item in order, with up to `depth` tasks under way or done
    ahead of the one the consumer holds, on `threads` threads.

    When the consumer stops (closes the iterator, or it is dropped) or fails, tasks not started are
    dropped and those under way waited for: no thread is left behind.
    """
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="gradmanifold-read")
    try:
        ahead: deque[tuple[T, Future[R]]] = deque()
        todo = iter(items)
        for item in todo:
            ahead.append((item, pool.submit(task, item)))
            if len(ahead) >= depth:
                break
        while ahead:
            head = ahead.popleft()
            for item in todo:  # keep `depth` tasks going while the consumer works on `head`
                ahead.append((item, pool.submit(task, item)))
                break
            yield head
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
