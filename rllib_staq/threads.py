"""torch's intra-op thread count in StaQ's processes (``intra_op_threads``).

StaQ's FQI phase is thousands of small torch ops in a row (2x256 MLPs, batches of
256). Splitting each op over OpenMP threads gains little on such sizes, and when
another process holds a core the threads spin-wait for each other at every op:
on 2 cores with one CPU-bound process beside it, an iteration with torch's
default of 2 threads ran 3.0x slower, with 1 thread 1.1x (README, "Threads";
``benchmarks/throughput.py --part contention``). So StaQ defaults to one thread.

``"auto"`` (the default) leaves torch alone where the thread count is already a
choice: ``OMP_NUM_THREADS`` set in the environment (by the user, or by Ray for
its actors, which it gives their ``num_cpus``). An int sets exactly that many
threads; ``None`` never touches torch's setting (keep your own
``torch.set_num_threads``).
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch

AUTO = "auto"
# The environment variables torch reads its intra-op thread count from.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
DEFAULT_THREADS = 1

IntraOpThreads = Optional[Union[int, str]]


def is_valid_setting(setting: IntraOpThreads) -> bool:
    if setting is None or setting == AUTO:
        return True
    return isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1


def threads_for(setting: IntraOpThreads, environ=os.environ) -> Optional[int]:
    """The thread count StaQ sets for ``setting``, or None to leave torch alone."""
    if setting is None:
        return None
    if setting == AUTO:
        if any(environ.get(name) for name in THREAD_ENV_VARS):
            return None
        return DEFAULT_THREADS
    return int(setting)


def apply_intra_op_threads(setting: IntraOpThreads) -> int:
    """Applies ``setting`` in this process; returns torch's thread count after it."""
    threads = threads_for(setting)
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
