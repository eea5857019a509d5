"""A worker process of the ``processes`` executor (:mod:`gasnet_plugin.host.process_executor`).

Started as ``python -m gasnet_plugin.host.process_worker``; it talks JSON lines, one
message per line, and nothing else crosses (no pickling)::

    stdin, first line   {"config": {...}, "source": "...", "files": [...], "threads": 1}
    stdin, then         {"id": 3, "count": [first, stop]}          rows of files[first:stop]
                        {"id": 4, "shard": {"start_row": ..., "start_file": ...,
                                            "start_in_file": ..., "limit": ...,
                                            "folder": "..."}}
    stdout, per task    {"id": 3, "result": [...]}  or  {"id": 3, "error": "traceback"}

It builds the pipeline once (models loaded once per worker) and runs the same task
functions as a Dask worker (:func:`~gasnet_plugin.host.executors.count_spectra`,
:func:`~gasnet_plugin.host.executors.process_shard`): shards are written atomically into
the run's folder and replace a copy an earlier attempt left. Anything a library prints goes
to standard error, so standard output carries the replies only. Ctrl-C in the terminal
reaches the whole process group: the worker ignores it and lets the driver decide; it ends
when its standard input closes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from typing import Any


def serve(setup: dict[str, Any], tasks: Any, replies: Any) -> None:
    """Answer every task line of ``tasks`` on ``replies`` (see the module docstring)."""
    from gasnet_plugin.host.executors import count_spectra, process_shard

    config, source = setup["config"], setup["source"]
    files, threads = setup["files"], int(setup["threads"])
    for line in tasks:
        if not line.strip():
            continue
        task = json.loads(line)
        try:
            if "count" in task:
                first, stop = task["count"]
                result: Any = count_spectra(config, source, files[first:stop], threads)
            else:
                shard = task["shard"]
                result = process_shard(config, source, files, shard["start_row"],
                                       shard["start_file"], shard["start_in_file"],
                                       shard["folder"], shard["limit"], threads)
            reply = {"id": task["id"], "result": result}
        except Exception:
            reply = {"id": task["id"], "error": traceback.format_exc()}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())    # stray output: to stderr
    setup = json.loads(sys.stdin.readline())
    serve(setup, sys.stdin, replies)


if __name__ == "__main__":
    main()
