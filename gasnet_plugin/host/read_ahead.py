"""Reading ahead: input files are read in a background thread while the stages compute.

Reading (FITS parsing, building the Spectrum objects) and computing (torch and numpy, which
release the GIL in their kernels) then overlap, so a run on two cores approaches the
slower of the two rather than their sum. The reading thread delivers the blocks in order
through a bounded queue (``depth`` blocks: a block is one file's spectra), so memory stays
bounded, and results are the same as without it: the same blocks form the same batches.
Threads, not processes: nothing has to be pickled.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


def read_ahead(items: Iterator[T], depth: int) -> Iterator[T]:
    """``items``, produced by a background thread at most ``depth`` ahead of the consumer.

    An exception in the producer is raised in the consumer at the item where it happened.
    Closing the returned generator (the run stopped) stops the producer after the item in
    hand. ``depth`` ≤ 0 returns ``items`` unchanged.
    """
    if depth <= 0:
        return items
    return _consume(items, depth)


def _consume(items: Iterator[T], depth: int) -> Iterator[T]:
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    thread = threading.Thread(target=produce, name="gasnet-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
