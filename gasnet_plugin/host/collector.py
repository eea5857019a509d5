"""Python's cyclic garbage collector, set for a run.

Reading a survey file makes and drops a few thousand small container objects (astropy
tables and columns, units, the specutils ``Spectrum`` and its WCS). With the interpreter's
default thresholds (a young-generation collection every 700 net allocations, a full one
after every 100 of those) the collector runs hundreds of times per file and each full pass
walks every object alive, the models and libraries included. ``benchmarks/bench_collector.py``
(800 real BOSS ``spec`` files, ``gasnet run``, one core, both settings in one process)
measured 6.03 ms per spectrum with the defaults against 5.33 with :data:`RUN_THRESHOLDS`
(1.13×).

:func:`run_collector` raises the thresholds for the duration of a run (``gasnet run``,
each Dask task in its worker, the in-memory runs of
:meth:`~gasnet_plugin.host.runner.Pipeline.run` and
:func:`~gasnet_plugin.api.process_spectra`, and the stpipe steps) and restores them
after. Cycles are still
collected, only in larger steps (a full pass every 10⁸ net allocations), so memory stays bounded
(``benchmarks/bench_streaming.py``).

Cyclic garbage that lives through two young collections waits for a full pass (a run of
40 000 mocks made 7). So a run should make none per batch: the batches' spectra share the
WCS of their file's spectrum and of the common grid (:meth:`InputBlock.slice
<gasnet_plugin.host.batch.InputBlock.slice>`, the resample stage), where specutils built
one per ``Spectrum``, a model class of its own each, dropped in cycles. What is left is per
file (its spectrum's WCS, its header).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

RUN_THRESHOLDS = (50_000, 20, 100)
"""``gc.set_threshold`` during a run: young-generation collection every 50 000 net
allocations, middle every 20 of those, full every 100 middle ones."""


_lock = threading.Lock()
_depth = 0
_before: tuple[int, ...] = ()


@contextmanager
def run_collector() -> Iterator[None]:
    """The collector at :data:`RUN_THRESHOLDS` inside the block, as before after it.

    Blocks may nest or overlap in threads (Dask tasks sharing a worker process): the
    thresholds are set by the first to enter and restored by the last to leave."""
    global _depth, _before
    with _lock:
        if _depth == 0:
            _before = gc.get_threshold()
            gc.set_threshold(*RUN_THRESHOLDS)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.set_threshold(*_before)
