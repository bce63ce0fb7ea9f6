"""Run a campaign's shards in forked worker processes; results come back as JSON.

Fork (not multiprocessing) so workers inherit the imported modules and
nothing is pickled; each worker writes its result, a JSON object, to a file
the parent reads once it exits. The parent must not have started trio or
any thread before forking.
"""

from __future__ import annotations

import json
import os
import tempfile
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def in_workers(shards: Sequence[T], work: Callable[[T], dict[str, Any]]) -> list[dict[str, Any]]:
    """``work(shard)`` for every shard, one forked worker each, concurrently.

    A worker that dies or raises gives ``{"worker_error": ...}``.
    """
    if len(shards) == 1:
        return [work(shards[0])]
    out = tempfile.mkdtemp(prefix="memable-workers-")
    workers = []
    for j, shard in enumerate(shards):
        path = os.path.join(out, f"{j}.json")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the worker
            code = 1
            try:
                result = work(shard)
                with open(path, "w") as f:
                    json.dump(result, f)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        workers.append((pid, path))
    results = []
    for pid, path in workers:
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        try:
            with open(path) as f:
                results.append(json.load(f))
            os.unlink(path)
        except (OSError, ValueError):
            results.append({"worker_error": f"worker {pid} exited with status {code}"})
    os.rmdir(out)
    return results
