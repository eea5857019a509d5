"""Streaming to shards, resuming a killed run, and the processes and Dask executors."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import DESI_FILE, LAMOST_FILES, REPO, SDSS_FILES, require

from gasnet_plugin.api import as_config
from gasnet_plugin.host.batch_outputs import Cursor
from gasnet_plugin.host.config import ConfigError
from gasnet_plugin.host.executors import missing_shards, shard_starts
from gasnet_plugin.host.runner import Pipeline
from gasnet_plugin.host.shards import SHARD_NAME, ShardStore, parts_folder
from gasnet_plugin.io.archive import ArchiveError, RunArchive, read_archive
from gasnet_plugin.io.text_columns import as_unicode

FIXTURES = [*SDSS_FILES, *LAMOST_FILES, DESI_FILE]


def small_config(tmp_path: Path, **top) -> Path:
    """The default pipeline with small batches and shards, archiving the model spectra."""
    config = yaml.safe_load((REPO / "example_configs" / "default.yaml").read_text())
    config.update({"batch_size": 2, "shard_size": 4, "progress": False,
                   "output": {"arrays": ["model"]}, **top})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def many_files(tmp_path: Path) -> Path:
    """The real fixtures copied 10 times (80 spectra in 60 files) plus a corrupt file."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for copy in range(10):
        for path in FIXTURES:
            shutil.copy(path, folder / f"c{copy:02d}-{path.name}")
    (folder / "c05-zz-corrupt.fits").write_bytes(SDSS_FILES[0].read_bytes()[:30000])
    return folder


def assert_same_archive(a: RunArchive, b: RunArchive) -> None:
    """Every column and array bit for bit (NaN equal to NaN); the run records may differ
    only in their creation time."""
    assert a.results.colnames == b.results.colnames
    assert len(a.results) == len(b.results)
    for name in a.results.colnames:
        x, y = np.asarray(a.results[name]), np.asarray(b.results[name])
        same = np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
        assert same, f"column {name} differs"
    assert (a.arrays is None) == (b.arrays is None)
    if a.arrays is not None:
        assert a.arrays.arrays.keys() == b.arrays.arrays.keys()
        for name, array in a.arrays.arrays.items():
            assert np.array_equal(array, b.arrays.arrays[name], equal_nan=True), name
        assert np.array_equal(a.arrays.loglam, b.arrays.loglam)
    for key in ("inputs", "n_spectra", "n_failed", "software"):
        assert getattr(a.run, key) == getattr(b.run, key)


def stop_before_merge(pipeline: Pipeline, files: list[Path], out: Path) -> None:
    """Run until every shard is written, then die as a crash in the merge would."""
    def crash(self, names, expected_rows=None):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ShardStore, "merge", crash)
        with pytest.raises(KeyboardInterrupt):
            pipeline.run_to_file(files, out)


def test_streaming_run_equals_in_memory_run(tmp_path):
    """Shards merged = the in-memory run; the shard folder is gone afterwards."""
    config = as_config(small_config(tmp_path))
    out = tmp_path / "out.asdf"
    streamed = Pipeline(config).run_to_file(FIXTURES, out)
    assert not parts_folder(out).exists()
    assert_same_archive(streamed, Pipeline(config).run(FIXTURES))
    assert_same_archive(streamed, read_archive(out))
    assert len(streamed.results) == 8


def test_archive_written_column_by_column_equals_the_in_memory_one(tmp_path, many_files):
    """Without output.arrays the archive is written from the shards column by column (never
    holding the table): same table bit for bit, same descriptions and units, a valid
    archive; shards whose columns differ (a failed file's rows lack the stages' columns)
    are filled as the in-memory merge fills them."""
    config = as_config(small_config(tmp_path, output={"arrays": []}))
    files = [*sorted(many_files.glob("c0[0-2]-*")), many_files / "c05-zz-corrupt.fits"]
    out = tmp_path / "out.asdf"
    streamed = Pipeline(config).run_to_file(files, out)
    in_memory = Pipeline(config).run(files)
    assert_same_archive(streamed, in_memory)
    on_disk = read_archive(out)                        # validated, checksums checked
    assert_same_archive(on_disk, in_memory)
    for name in in_memory.results.colnames:
        assert on_disk.results[name].description == in_memory.results[name].description
        assert on_disk.results[name].unit == in_memory.results[name].unit
    assert on_disk.run.n_failed == in_memory.run.n_failed == 1
    # a few columns memory-mapped without reading the table (what the CLI lists); text as
    # stored, in ASCII bytes
    mapped = streamed.columns(["ZWARN", "ZWARN_REASON", "COEFF"])
    assert mapped["ZWARN_REASON"].dtype.kind == "S"
    for name, values in mapped.items():
        assert np.array_equal(as_unicode(values), np.asarray(in_memory.results[name]),
                              equal_nan=values.dtype.kind == "f"), name


def test_dask_run_survives_a_killed_worker(tmp_path, many_files):
    """One of two Dask workers is killed (SIGKILL, by its PID) while it computes a shard:
    the run finishes, and its archive equals the local run's (no row lost or twice)."""
    require("distributed", "GASNET_REQUIRE_DASK")
    import logging
    import os
    import threading

    import torch
    from distributed import Client, LocalCluster

    from gasnet_plugin.host.shards import SHARD_NAME

    files = sorted(many_files.iterdir())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # as the workers: float32 reductions depend on the threads
    try:
        local = Pipeline(as_config(small_config(tmp_path, output={"arrays": []}))).run_to_file(
            files, tmp_path / "local.asdf")
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "dask.asdf"
    parts = parts_folder(out)
    done: dict[str, object] = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster) as client:
        config = as_config(small_config(tmp_path, output={"arrays": []}, executor={
            "name": "dask", "scheduler": cluster.scheduler_address}))

        def run() -> None:
            try:
                done["archive"] = Pipeline(config).run_to_file(files, out)
            except BaseException as exc:  # reported by the assertion below
                done["error"] = exc

        runner = threading.Thread(target=run)
        runner.start()
        victim = None
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline and runner.is_alive():
            shards = parts.is_dir() and any(SHARD_NAME.match(p.name) for p in parts.iterdir())
            busy = [w for w, keys in client.processing().items()
                    if any("process_shard" in str(k) for k in keys)]
            if shards and busy:
                victim = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(victim, signal.SIGKILL)
            time.sleep(0.05)
        runner.join(timeout=600)
    assert victim is not None, "no worker was busy with a shard to kill"
    assert not runner.is_alive() and "error" not in done, done.get("error")
    assert_same_archive(local, done["archive"])
    assert len(done["archive"].results) == len(local.results) == 81


def _worker_pids() -> set[int]:
    """PIDs of this process's children that are ``processes``-executor workers."""
    import os

    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"gasnet_plugin.host.process_worker" in cmdline:
            pids.add(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc")
def test_processes_executor_gives_the_local_archive_and_replaces_a_killed_worker(
        tmp_path, many_files):
    """executor: processes, 2 workers: one worker is killed (SIGKILL, by its PID) while
    the shards are being computed; a new worker takes its shard again, and the archive
    equals a local run's (one torch thread, as the workers): no row lost or twice. Then a
    local run killed before its merge, with every other shard removed, is resumed under
    the processes executor to the same archive."""
    import os
    import threading

    import torch

    from gasnet_plugin.host.shards import SHARD_NAME

    files = sorted(many_files.iterdir())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # as the workers: float32 reductions depend on the threads
    try:
        local = Pipeline(as_config(small_config(tmp_path))).run_to_file(
            files, tmp_path / "local.asdf")
    finally:
        torch.set_num_threads(threads)
    processes = as_config(small_config(tmp_path, executor={"name": "processes",
                                                           "n_workers": 2})).as_dict()
    out = tmp_path / "processes.asdf"
    parts = parts_folder(out)
    done: dict[str, object] = {}

    def run() -> None:
        try:
            done["archive"] = Pipeline(as_config(processes)).run_to_file(files, out)
        except BaseException as exc:  # reported by the assertion below
            done["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    victim, seen = None, set()
    deadline = time.monotonic() + 300
    while runner.is_alive() and time.monotonic() < deadline:
        seen |= _worker_pids()
        shards = parts.is_dir() and sum(bool(SHARD_NAME.match(p.name))
                                        for p in parts.iterdir())
        if victim is None and shards and seen:
            victim = min(seen)
            os.kill(victim, signal.SIGKILL)
        time.sleep(0.05)
    runner.join(timeout=60)
    assert victim is not None, "no worker to kill"
    assert not runner.is_alive() and "error" not in done, done.get("error")
    assert len(seen) >= 3, "the killed worker was not replaced"
    assert_same_archive(local, done["archive"])
    assert done["archive"].run.config["executor"]["name"] == "processes"

    mixed = tmp_path / "mixed.asdf"
    torch.set_num_threads(1)
    try:
        stop_before_merge(Pipeline(as_config(small_config(tmp_path))), files, mixed)
    finally:
        torch.set_num_threads(threads)
    store = ShardStore(parts_folder(mixed))
    for index in store.indices()[::2]:
        store.path(index).unlink()
    resumed = Pipeline(as_config(processes)).run_to_file(files, mixed, resume=True)
    assert resumed.run.config["executor"]["name"] == "processes"
    assert_same_archive(local, resumed)


def test_reading_from_a_cursor_skips_exactly_the_rows_before_it(tmp_path):
    pipeline = Pipeline(as_config(small_config(tmp_path)))
    files = [DESI_FILE, *LAMOST_FILES, *SDSS_FILES]
    every = [(b.file_index, b.first_row + i) for b in pipeline.read_blocks(files)
             for i in range(len(b))]
    assert every[:3] == [(0, 0), (0, 1), (1, 0)] and len(every) == 8
    for start in (Cursor(0, 1), Cursor(1, 0), Cursor(2, 0), Cursor(5, 0)):
        got = [(b.file_index, b.first_row + i)
               for b in pipeline.read_blocks(files, start, limit=3) for i in range(len(b))]
        first = every.index((start.file, start.row))
        assert got == every[first:first + 3]


def test_row_counts_from_headers_equal_the_rows_read(tmp_path, many_files):
    """A run's row count per file (from the headers for SDSS and LAMOST files, read for
    the others) is the number of rows reading gives, unreadable files included; only the
    one-spectrum formats are counted without reading."""
    from gasnet_plugin.io.readers import spectra_in_file

    pipeline = Pipeline(as_config(small_config(tmp_path)))
    files = sorted(many_files.iterdir())[:7]
    assert any("zz-corrupt" in f.name for f in sorted(many_files.iterdir()))
    for path in [*files, many_files / "c05-zz-corrupt.fits"]:
        read = sum(len(block) for block in pipeline.read_file(path))
        assert pipeline.count_rows(path) == read, path.name
    assert spectra_in_file(SDSS_FILES[0]) == spectra_in_file(LAMOST_FILES[0]) == 1
    assert spectra_in_file(DESI_FILE) is None                     # read to count


def test_a_shard_that_ends_off_the_counted_rows_is_an_error(tmp_path):
    """Files of 3, 1 and 4 rows: the shard of rows [2, 6) ends at file 2, row 2; ending
    anywhere else means a file changed since it was counted."""
    from gasnet_plugin.host.executors import RowCountError, check_shard_end, row_offsets

    good = {"start_row": 2, "n_rows": 4, "end_file": 2, "end_row": 2}
    check_shard_end(row_offsets([3, 1, 4]), good, tmp_path)
    with pytest.raises(RowCountError, match=r"rows from 2 ended at file 2, row 3.*"
                                           r"row_counts\.json"):
        check_shard_end(row_offsets([3, 1, 4]), {**good, "end_row": 3}, tmp_path)


def test_shard_starts_from_row_counts():
    # files of 3, 0, 5 and 1 rows; shards of 2 rows start at run rows 0, 2, 4, 6, 8
    assert shard_starts([3, 0, 5, 1], 2) == [(0, 0), (0, 2), (2, 1), (2, 3), (3, 0)]


def test_missing_shards_fill_the_gaps_between_shards_of_any_size():
    # 20 rows; shards on disk: rows [0, 6), [8, 10), [14, 20); pieces of at most 4 rows
    assert missing_shards(20, [(8, 2), (0, 6), (14, 6)], 4) == [(6, 2), (10, 4)]
    assert missing_shards(9, [], 4) == [(0, 4), (4, 4), (8, 1)]
    assert missing_shards(6, [(0, 6)], 4) == []


def test_shards_closed_by_time_give_the_same_archive(tmp_path):
    """shard_seconds tiny: a shard after every batch (shards of unequal size)."""
    config = as_config(small_config(tmp_path, shard_seconds=1e-9, shard_size=6))
    out = tmp_path / "out.asdf"
    stop_before_merge(Pipeline(config), FIXTURES, out)
    store = ShardStore(parts_folder(out))
    assert store.indices() == [0, 2, 4, 6]              # one per batch of 2
    archive = Pipeline(config).run_to_file(FIXTURES, out, resume=True)
    assert_same_archive(archive, Pipeline(config).run(FIXTURES))


def test_sigterm_saves_the_work_and_says_how_to_resume(tmp_path, many_files):
    """SIGTERM: the batch in hand is finished and saved, the message says how to resume,
    and --resume reports what it reuses and gives the uninterrupted archive."""
    config = small_config(tmp_path, batch_size=1, shard_size=1000)
    whole, stopped = tmp_path / "whole.asdf", tmp_path / "stopped.asdf"
    run_cli("run", str(config), str(many_files), "-o", str(whole))
    # models loaded, a few batches done
    sigterm_then_resume(config, many_files, stopped,
                        lambda parts: (parts / "manifest.json").is_file(), settle=1.0)
    assert_same_archive(read_archive(whole), read_archive(stopped))


def test_sigterm_under_the_processes_executor_saves_the_shards_in_hand(tmp_path, many_files):
    """executor: processes: SIGTERM stops handing out shards, the ones being computed are
    saved, the message says how to resume, and --resume gives the archive of a run without
    a stop (one torch thread per process in both)."""
    import os

    config = small_config(tmp_path, executor={"name": "processes", "n_workers": 2})
    whole, stopped = tmp_path / "whole.asdf", tmp_path / "stopped.asdf"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "gasnet_plugin.cli", "run", str(config),
                           str(many_files), "-o", str(whole), "--executor", "local"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr            # the corrupt file is flagged
    sigterm_then_resume(config, many_files, stopped, lambda parts: parts.is_dir() and any(
        SHARD_NAME.match(p.name) for p in parts.iterdir()))
    assert_same_archive(read_archive(whole), read_archive(stopped))


def test_a_failing_worker_stops_the_run_with_its_traceback_and_exit_3(tmp_path):
    """A shard task that raises in its worker (a fault put in through the workers'
    ``sitecustomize``) stops ``gasnet run --executor processes`` with exit code 3, the
    worker's traceback and where the shards are; the driver is not affected."""
    import os

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import gasnet_plugin.host.executors as executors\n"
        "def broken(*args, **kwargs):\n"
        "    raise OSError('disk full (injected)')\n"
        "executors.process_shard = broken\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = tmp_path / "out.asdf"
    done = subprocess.run(
        [sys.executable, "-m", "gasnet_plugin.cli", "run", str(small_config(tmp_path)),
         *map(str, FIXTURES[:2]), "-o", str(out), "--executor", "processes"],
        capture_output=True, text=True, timeout=300, env={**env, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr              # without the fault: fine
    done = subprocess.run(
        [sys.executable, "-m", "gasnet_plugin.cli", "run", str(small_config(tmp_path)),
         *map(str, FIXTURES[:2]), "-o", str(tmp_path / "broken.asdf"), "--executor",
         "processes"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 3, done.stderr
    assert "failed the shard of rows from 0" in done.stderr
    assert "disk full (injected)" in done.stderr and "--resume" in done.stderr
    assert not (tmp_path / "broken.asdf").exists()


def sigterm_then_resume(config: Path, inputs: Path, out: Path,
                        started: Callable[[Path], bool], settle: float = 0.0) -> None:
    """``gasnet run CONFIG INPUTS -o OUT`` stopped by SIGTERM once ``started(parts
    folder)`` holds (and ``settle`` seconds later): it exits 143 saying how to resume, with
    some of the 81 rows saved and no archive; ``--resume`` then reports what it reuses and
    writes the archive."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gasnet_plugin.cli", "run", str(config), str(inputs),
         "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parts = parts_folder(out)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not started(parts):
        time.sleep(0.01)
    time.sleep(settle)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr and "--resume" in stderr
    saved = ShardStore(parts).resume_point()[0]
    assert 0 < saved < 81 and not out.exists()
    done = run_cli("run", str(config), str(inputs), "-o", str(out), "--resume")
    assert f"resuming: {saved} spectra reused" in done.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gasnet_plugin.cli", *args],
                          capture_output=True, text=True, timeout=300)


def kill_when_shards(command: list[str], parts: Path, n_shards: int) -> int:
    """Start ``command``, SIGKILL it once ``n_shards`` shards are on disk; the number of
    shards there when it died."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if parts.is_dir() and len(list(parts.glob("shard-*.asdf"))) >= n_shards:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    return len(list(parts.glob("shard-*.asdf")))


@pytest.mark.parametrize("kill_after", [1, 17])
def test_resume_after_kill_gives_the_uninterrupted_archive(tmp_path, many_files, kill_after):
    """A real ``gasnet run`` process killed with SIGKILL mid-run, then ``--resume``."""
    config = small_config(tmp_path, batch_size=1, shard_size=2)
    whole, resumed = tmp_path / "whole.asdf", tmp_path / "resumed.asdf"
    done = run_cli("run", str(config), str(many_files), "-o", str(whole))
    assert done.returncode == 1, done.stderr           # 1: the corrupt file's row is flagged
    command = [sys.executable, "-m", "gasnet_plugin.cli", "run", str(config), str(many_files),
               "-o", str(resumed)]
    left = kill_when_shards(command, parts_folder(resumed), kill_after)
    assert 0 < left < 41 and not resumed.exists()       # 81 rows = 41 shards
    refused = run_cli("run", str(config), str(many_files), "-o", str(resumed))
    assert refused.returncode == 2 and "--resume" in refused.stderr
    done = run_cli("run", str(config), str(many_files), "-o", str(resumed), "--resume")
    assert done.returncode == 1, done.stderr
    assert not parts_folder(resumed).exists()
    a, b = read_archive(whole), read_archive(resumed)
    assert_same_archive(a, b)
    rows = list(zip(b.results["SOURCE"], b.results["HDU"], b.results["ROW"], strict=True))
    assert len(rows) == len(set(rows)) == 81            # none lost, none twice


def test_resume_after_a_crash_before_the_merge(tmp_path):
    """All shards written, the process dies in the merge: resume only merges."""
    config = as_config(small_config(tmp_path))
    out = tmp_path / "out.asdf"

    stop_before_merge(Pipeline(config), FIXTURES, out)
    store = ShardStore(parts_folder(out))
    assert store.indices() == [0, 4] and not out.exists()    # shards named by first row
    pipeline = Pipeline(config)
    archive = pipeline.run_to_file(FIXTURES, out, resume=True)
    assert pipeline.stage_seconds == {}                 # nothing was computed again
    assert len(archive.results) == 8
    assert_same_archive(archive, Pipeline(config).run(FIXTURES))


def test_a_resumed_run_validates_the_shards_it_takes_up(tmp_path):
    """A run reads the shards it wrote back without validating them again; shards left by
    a stopped run are validated when a resumed run takes them up: one that is a readable
    ASDF file but not a results shard is refused, naming the file."""
    import asdf

    config = as_config(small_config(tmp_path))
    out = tmp_path / "out.asdf"
    stop_before_merge(Pipeline(config), FIXTURES, out)
    store = ShardStore(parts_folder(out))
    with asdf.open(store.path(4)) as af:
        record = dict(af["shard"])
    asdf.AsdfFile({"shard": record, "results": "not a table"}).write_to(store.path(4))
    with pytest.raises(ArchiveError, match=r"shard-000004\.asdf: not a valid gasnet "
                                           r"results shard"):
        Pipeline(config).run_to_file(FIXTURES, out, resume=True)


def test_shard_records_are_reused_until_the_file_is_replaced(tmp_path, monkeypatch):
    """A store knows the records of the shards it wrote or read without opening the files
    again (the merge checks every record before it starts), and the column-by-column
    merge takes the shard just written from memory: a local run opens none of its shards
    (its archive equals the in-memory one:
    test_archive_written_column_by_column_equals_the_in_memory_one); a shard file replaced
    since (a retried task writes it again) is read again."""
    import os

    import asdf

    config = as_config(small_config(tmp_path))
    real_open = asdf.open
    opened: list[str] = []

    def counting_open(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(asdf, "open", counting_open)
    table_only = as_config(small_config(tmp_path, output={"arrays": []}))
    archive = Pipeline(table_only).run_to_file(FIXTURES, tmp_path / "whole.asdf")
    assert len(archive.results) == 8
    assert [name for name in opened if SHARD_NAME.match(name)] == []

    out = tmp_path / "out.asdf"
    stop_before_merge(Pipeline(config), FIXTURES, out)
    store = ShardStore(parts_folder(out))
    opened.clear()
    first = store.record(4)
    assert first["n_rows"] == 4 and first["start_row"] == 4 and len(opened) == 1
    assert store.record(4) == first and len(opened) == 1
    with real_open(store.path(4)) as af:
        tree = {"shard": {**af["shard"], "end_row": first["end_row"] + 1},
                "results": af["results"]}
        replacement = store.path(4).with_name("replacement.asdf")
        asdf.AsdfFile(tree).write_to(replacement)
    os.replace(replacement, store.path(4))
    assert store.record(4)["end_row"] == first["end_row"] + 1 and len(opened) == 2


def test_resume_refuses_other_config_or_inputs(tmp_path):
    out = tmp_path / "out.asdf"
    config = as_config(small_config(tmp_path))
    store = ShardStore(parts_folder(out))
    store.open(config, FIXTURES, config.spectra_per_shard, keep=False)
    changed = as_config(small_config(tmp_path, batch_size=4))
    with pytest.raises(ArchiveError, match=r"out\.asdf\.parts: the stopped run used "
                                           r"another config"):
        Pipeline(changed).run_to_file(FIXTURES, out, resume=True)
    with pytest.raises(ArchiveError, match="used other inputs"):
        Pipeline(config).run_to_file(FIXTURES[:3], out, resume=True)
    with pytest.raises(ArchiveError, match="shards of a stopped run"):
        Pipeline(config).run_to_file(FIXTURES, out)
    # --overwrite starts again
    archive = Pipeline(config).run_to_file(FIXTURES, out, overwrite=True)
    assert len(archive.results) == 8 and not store.exists()


def test_merge_refuses_a_missing_shard(tmp_path):
    config = as_config(small_config(tmp_path))
    out = tmp_path / "out.asdf"
    stop_before_merge(Pipeline(config), FIXTURES, out)
    store = ShardStore(parts_folder(out))
    store.spectra_per_shard = config.spectra_per_shard
    store.path(0).unlink()
    with pytest.raises(ArchiveError, match=r"rows \[0, 4\) are missing"):
        store.merge(["model"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_dask_local_cluster_gives_the_local_archive(tmp_path, many_files):
    """executor: dask on a LocalCluster of 2 worker processes; then resume a killed local
    run under dask (shards are the same whoever writes them)."""
    require("distributed", "GASNET_REQUIRE_DASK")
    files = sorted(many_files.iterdir())[:41]
    local = Pipeline(as_config(small_config(tmp_path))).run_to_file(
        files, tmp_path / "local.asdf")
    dask_config = small_config(tmp_path, executor={"name": "dask", "n_workers": 2})
    on_dask = Pipeline(as_config(dask_config)).run_to_file(files, tmp_path / "dask.asdf")
    assert_same_archive(local, on_dask)
    assert on_dask.run.config["executor"]["name"] == "dask"
    # half the shards from the local executor, the rest from the workers
    out = tmp_path / "mixed.asdf"
    config = as_config(small_config(tmp_path))
    stop_before_merge(Pipeline(config), files, out)
    store = ShardStore(parts_folder(out))
    for index in store.indices()[::2]:
        store.path(index).unlink()
    mixed = Pipeline(as_config(dask_config)).run_to_file(files, out, resume=True)
    assert_same_archive(local, mixed)


def test_cli_executor_and_device_switches(tmp_path):
    out = tmp_path / "out.asdf"
    done = run_cli("run", str(small_config(tmp_path)), *map(str, FIXTURES[:2]), "-o", str(out),
                   "--device", "cpu", "--executor", "local")
    assert done.returncode == 0, done.stderr
    assert read_archive(out).run.config["device"] == "cpu"
    on_workers = tmp_path / "workers.asdf"
    done = run_cli("run", str(small_config(tmp_path)), *map(str, FIXTURES[:2]), "-o",
                   str(on_workers), "--executor", "processes")
    assert done.returncode == 0, done.stderr
    archive = read_archive(on_workers)
    assert archive.run.config["executor"]["name"] == "processes"
    assert list(archive.results["SOURCE"]) == list(read_archive(out).results["SOURCE"])
    bad = run_cli("run", str(small_config(tmp_path)), str(FIXTURES[0]), "-o",
                  str(tmp_path / "x.asdf"), "--device", "tpu")
    assert bad.returncode == 2 and "device" in bad.stderr


def test_resume_of_a_finished_run_reads_its_archive(tmp_path):
    config = as_config(small_config(tmp_path))
    out = tmp_path / "out.asdf"
    first = Pipeline(config).run_to_file(FIXTURES, out)
    again = Pipeline(config)
    assert_same_archive(first, again.run_to_file(FIXTURES, out, resume=True))
    assert again.stage_seconds == {}
    with pytest.raises(ArchiveError, match="another config or other inputs"):
        Pipeline(as_config(small_config(tmp_path, batch_size=4))).run_to_file(
            FIXTURES, out, resume=True)


def test_dask_executor_without_dask_is_a_clear_error(tmp_path, monkeypatch):
    """Without the [dask] extra: a ConfigError naming it, and no shard folder left."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "distributed"
                        else real_find_spec(name, *a))
    config = as_config(small_config(tmp_path, executor={"name": "dask"}))
    out = tmp_path / "out.asdf"
    with pytest.raises(ConfigError, match=r"pip install 'gasnet-plugin\[dask\]'"):
        Pipeline(config).run_to_file(FIXTURES, out)
    assert not parts_folder(out).exists()


def test_one_run_per_output_and_no_foreign_shard_merged(tmp_path, many_files):
    """A second run on the same output while the first writes it is refused (exit 2,
    plain or --overwrite); the first finishes untouched; a shard of another run is never
    merged."""
    config = small_config(tmp_path, batch_size=1, shard_size=4)
    out = tmp_path / "out.asdf"
    first = subprocess.Popen([sys.executable, "-m", "gasnet_plugin.cli", "run", str(config),
                              str(many_files), "-o", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parts = parts_folder(out)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(parts.glob("shard-*.asdf")):
        time.sleep(0.05)
    for extra in ([], ["--overwrite"]):
        second = run_cli("run", str(config), str(SDSS_FILES[0]), "-o", str(out), *extra)
        assert second.returncode == 2, second.stderr
        assert "another gasnet run is writing" in second.stderr
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 1, stderr                  # the corrupt file's row
    assert len(read_archive(out).results) == 81

    # a shard from another run in the folder: the merge refuses it
    done = tmp_path / "done.asdf"
    stop_before_merge(Pipeline(as_config(small_config(tmp_path))), FIXTURES, done)
    store = ShardStore(parts_folder(done))
    record, results, _ = store.read(4)
    import asdf

    asdf.AsdfFile({"shard": {**record, "run": "someone-else"},
                   "results": results}).write_to(store.path(4))
    with pytest.raises(ArchiveError, match="a shard of another run"):
        store.merge(["model"])


def test_example_dask_config_runs_on_the_fixtures(tmp_path):
    """example_configs/dask.yaml as a user runs it: a LocalCluster, the fixtures, an
    archive equal to the default config's local run (same threads per process)."""
    require("distributed", "GASNET_REQUIRE_DASK")
    import torch

    from gasnet_plugin.api import run_pipeline

    archive = run_pipeline(REPO / "example_configs" / "dask.yaml", FIXTURES,
                           tmp_path / "dask.asdf")
    assert archive.run.config["executor"]["name"] == "dask"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_pipeline(REPO / "example_configs" / "default.yaml", FIXTURES,
                             tmp_path / "local.asdf")
    finally:
        torch.set_num_threads(threads)
    assert_same_archive(local, archive)


def test_a_file_and_a_batch_are_let_go_before_the_next_file_is_read(monkeypatch, tmp_path):
    """At a file boundary nothing of the files read before, nor of the batch processed
    before, is held while the next file is read: a batch that goes on into the next file
    keeps a copy of the previous file's tail, not a view of the whole file. Files of 5
    spectra in batches of 3, so batches straddle files."""
    import gc
    import weakref

    import astropy.units as u

    import gasnet_plugin.host.runner as runner
    from gasnet_plugin.io.labels import label_rows
    from gasnet_plugin.io.spectrum import build_spectrum

    wave = np.linspace(3600, 9200, 800)
    files_arrays: list[weakref.ref] = []     # each file's flux and ivar
    grid_arrays: list[weakref.ref] = []      # each processed batch's arrays on the grid
    held_at_read: list[int] = []

    def read(path, reader, readers):
        gc.collect()                   # only references still in use survive this
        held_at_read.append(sum(ref() is not None for ref in files_arrays + grid_arrays))
        rng = np.random.default_rng(int(Path(path).stem[1:]))
        flux = rng.normal(10, 1, (5, wave.size)).astype(np.float32)
        ivar = np.full_like(flux, 4.0)
        files_arrays.extend([weakref.ref(flux), weakref.ref(ivar)])
        return [build_spectrum(wave, flux, ivar, None, u.dimensionless_unscaled,
                               label_rows(5, str(path)))]

    monkeypatch.setattr(runner, "read_spectra", read)
    files = [tmp_path / f"f{i}.fits" for i in range(4)]
    pipeline = Pipeline(as_config({"stages": ["resample"], "batch_size": 3,
                                   "progress": False}))
    process_batch = pipeline.process_batch

    def process_and_watch(batch):
        done = process_batch(batch)
        grid_arrays.extend(weakref.ref(b.arrays["flux"]) for b in done)
        return done

    pipeline.process_batch = process_and_watch
    outputs = list(pipeline.stream(files))
    assert [len(output) for output in outputs] == [3, 3, 3, 3, 3, 3, 2]
    assert held_at_read == [0, 0, 0, 0]
    # the copied tails give the results of views: the same as one batch of all 20
    whole = Pipeline(as_config({"stages": ["resample"], "batch_size": 20, "progress": False}))
    (one,) = list(whole.stream(files))
    for name in ("SNR_MEDIAN", "NPIX_VALID", "ROW"):
        np.testing.assert_array_equal(
            np.concatenate([output.results[name] for output in outputs]), one.results[name])


def test_batches_share_their_file_s_and_the_grid_s_wcs(monkeypatch, tmp_path):
    """specutils builds a lookup-table WCS (with a model class of its own) for every
    ``Spectrum`` made from a spectral axis alone, and drops it as cyclic garbage that only
    the collector's full passes free: one per batch slice and per resampled batch (10-14
    MB of a run's peak, docs/scale.rst). The slices of a
    file share its spectrum's WCS and every resampled batch the grid's, made once: WCSs
    are built once per file read and once for the grid, not per batch. Files of 5 spectra
    in batches of 3, so batches slice files and straddle them."""
    import astropy.units as u
    import specutils.spectra.spectrum as specutils_spectrum

    import gasnet_plugin.host.runner as runner
    from gasnet_plugin.io.labels import label_rows
    from gasnet_plugin.io.spectrum import build_spectrum

    wave = np.linspace(3600, 9200, 800)

    def read(path, reader, readers):
        rng = np.random.default_rng(int(Path(path).stem[1:]))
        flux = rng.normal(10, 1, (5, wave.size)).astype(np.float32)
        return [build_spectrum(wave, flux, np.full_like(flux, 4.0), None,
                               u.dimensionless_unscaled, label_rows(5, str(path)))]

    built = []
    gwcs_from_array = specutils_spectrum.gwcs_from_array

    def counting(*args, **kwargs):
        built.append(args[1])      # the flux shape it was built for
        return gwcs_from_array(*args, **kwargs)

    monkeypatch.setattr(runner, "read_spectra", read)
    monkeypatch.setattr(specutils_spectrum, "gwcs_from_array", counting)
    files = [tmp_path / f"f{i}.fits" for i in range(4)]
    pipeline = Pipeline(as_config({"stages": ["resample"], "batch_size": 3,
                                   "progress": False}))
    pipeline.setup()
    outputs = list(pipeline.stream(files))
    assert [len(output) for output in outputs] == [3, 3, 3, 3, 3, 3, 2]
    assert len(built) == 4 + 1      # the four files and the grid


@pytest.mark.parametrize("consume", [False, True])
def test_merging_batch_results_holds_the_rows_once_or_twice_at_most(consume):
    """A shard's table is stacked from its batches' tables with one copy of the data: the
    stacked columns become the table's columns (``Table(copy=False)``) instead of being
    copied again. With ``consume`` (what the executors use) each column also leaves the
    batches' tables as soon as it is stacked, so the rows are never held twice: a shard of
    8192 mock rows is ~29 MB. Measured with tracemalloc (numpy's allocations), the parts
    made while it traces."""
    import tracemalloc

    from astropy.table import Table

    from gasnet_plugin.host.batch_outputs import merge_results

    rng = np.random.default_rng(5)
    tracemalloc.start()
    try:
        parts = [Table({"Z": rng.random(50_000), "ZERR": rng.random(50_000),
                        **{f"LINE{i}": rng.random(50_000) for i in range(20)},
                        "ZWARN_REASON": np.full(50_000, "xy")}) for _ in range(3)]
        del parts[1]["ZERR"]             # a batch whose later stages failed
        for part in parts:
            part["Z"].unit = "km"
            part["Z"].description = "redshift"
        expected_z = np.concatenate([p["Z"] for p in parts])
        stacked_bytes = 3 * 50_000 * (22 * 8 + 8)
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        merged = merge_results(parts, consume=consume)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    above = (peak - start) / stacked_bytes
    if consume:
        assert above < 0.2, f"{above:.2f} × the rows above the parts"   # one column
        assert all(not part.colnames for part in parts)
    else:
        assert 0.9 < above < 1.2, f"{above:.2f} × the rows above the parts"
    np.testing.assert_array_equal(merged["Z"], expected_z)
    assert np.isnan(merged["ZERR"][50_000:100_000]).all()
    assert list(merged["ZWARN_REASON"][:2]) == ["xy"] * 2
    assert merged["Z"].unit == "km" and merged["Z"].description == "redshift"
