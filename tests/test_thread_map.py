"""thread_map: the pieces' results in order, on threads, errors raised to the caller."""

from __future__ import annotations

import threading

import pytest

from gasnet_plugin.thread_map import thread_map


def test_results_come_in_order_from_several_threads():
    names: set[str] = set()
    started = threading.Barrier(3, timeout=10)

    def work(item: int) -> int:
        names.add(threading.current_thread().name)
        if item < 3:
            started.wait()          # three pieces at once, or this times out
        return item * item

    assert thread_map(work, range(8), threads=3) == [i * i for i in range(8)]
    assert len(names) == 3 and threading.current_thread().name not in names


@pytest.mark.parametrize("threads", [0, 1])
def test_one_thread_is_a_plain_loop_in_this_thread(threads):
    names = []
    assert thread_map(lambda i: names.append(threading.current_thread().name) or i,
                      [3, 1, 2], threads) == [3, 1, 2]
    assert set(names) == {threading.current_thread().name}


def test_an_error_in_a_piece_reaches_the_caller_and_no_thread_outlives_the_call():
    done = []

    def work(item: int) -> int:
        if item == 1:
            raise ValueError("piece 1 failed")
        done.append(item)
        return item

    with pytest.raises(ValueError, match="piece 1 failed"):
        thread_map(work, range(6), threads=2)
    assert 0 in done and 1 not in done
    assert not [t for t in threading.enumerate() if t.name.startswith("gasnet-fit")]
