"""A process pool that stops at the first error and reports it as one DataError line.

Used by every stage that works file by file (dataset preparation, the miniature world):
work is cut into chunks, each worker returns small records, and the first failure cancels
the rest so that a bad file costs seconds, not the whole dataset.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable

from dginstyle.io import DISK_FULL_ERRNOS, DataError

MAX_CHUNK = 32  # items per task: small enough that a stop request is honoured promptly

def default_threads() -> int:
    """Threads/processes a job may use: $OMP_NUM_THREADS (Snakemake sets it to the rule's
    threads) when it is a positive integer, else every CPU."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)


_STOP = None  # a multiprocessing.Event in workers: set by the parent after the first error


def _init_worker(stop_event) -> None:
    global _STOP
    _STOP = stop_event


def stopped() -> bool:
    """True in a worker once the parent asked every worker to stop (call between items)."""
    return _STOP is not None and _STOP.is_set()


def chunked(items: list, workers: int) -> list[list]:
    """Split work into chunks: about 8 per worker (load balance), at most MAX_CHUNK items each."""
    if not items:
        return []
    size = max(1, min(MAX_CHUNK, math.ceil(len(items) / (workers * 8))))
    return [items[i : i + size] for i in range(0, len(items), size)]


def parallel_map(fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int) -> Iterable[Any]:
    """Yield fn(job) for every job (in completion order) using `workers` processes.

    The first exception of any job cancels the pending jobs, asks the running ones to stop,
    and is re-raised here: a DataError as itself, anything else wrapped in a DataError. A
    worker that dies (killed, out of memory) also ends in a DataError.
    """
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield fn(job)
        return
    context = multiprocessing.get_context()
    stop = context.Event()
    executor = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=context, initializer=_init_worker, initargs=(stop,)
    )
    try:
        pending = {executor.submit(fn, job) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                exc = future.exception()
                if exc is not None:
                    stop.set()
                    for other in pending:
                        other.cancel()
                    if isinstance(exc, DataError):
                        raise DataError(str(exc)) from None
                    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
                        raise OSError(exc.errno, exc.strerror, exc.filename) from None  # the CLI says "out of disk space"
                    if isinstance(exc, BrokenProcessPool):
                        raise DataError(
                            f"a worker process died ({exc}); it may have run out of memory: rerun with fewer --workers"
                        ) from None
                    raise DataError(f"conversion failed in a worker: {exc.__class__.__name__}: {exc}") from None
                yield future.result()
    finally:
        stop.set()
        executor.shutdown(wait=True, cancel_futures=True)
