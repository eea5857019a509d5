"""Independent pieces of a fit run on threads: chunks of rows, or line groups.

The subtype stage's fits spend their time in compiled kernels (numba, ``nogil``) and in
BLAS matrix products, both of which release Python's lock, so threads of one process can
run them side by side. Each piece is computed exactly as it would be alone, on one BLAS
thread, whatever thread runs it: the results do not depend on the number of threads, bit
for bit. The pieces must not depend on each other; a piece may write its own, disjoint
part of an output array.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def thread_map(work: Callable[[Item], Result], items: Iterable[Item],
               threads: int) -> list[Result]:
    """``[work(item) for item in items]``, on up to ``threads`` threads at once.

    In order. An exception in a piece is raised here: the pieces not yet started are
    then not run, and those running finish before this returns. With
    ``threads`` ≤ 1 or a single item, a plain loop in this thread (no pool is started). A
    pool is made per call and shut down before returning, so nothing outlives the call (no
    thread across a ``fork``)."""
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items)),
                            thread_name_prefix="gasnet-fit") as pool:
        return list(pool.map(work, items))
