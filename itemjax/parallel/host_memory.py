"""Host memory settings for XLA's CPU backend (glibc ``mallopt``), applied once per process."""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`tune_host_allocator` sets.
_MALLOPT_SETTINGS = (
    (-8, 1),  # M_ARENA_MAX: every thread allocates from the main (brk) heap
    (-4, 0),  # M_MMAP_MAX: no per-allocation mmap, big buffers come from the heap too
    (-1, 1 << 30),  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed memory instead of returning it
    (-2, 64 << 20),  # M_TOP_PAD: grow the heap 64 MiB at a time
)


def tune_host_allocator() -> bool:
    """Keep freed host buffers in the process heap (glibc ``mallopt``); ``True`` if applied.

    XLA's CPU backend allocates every step's large temporaries (``[n_nodes, d]`` float32,
    18 MB on Gowalla) afresh. glibc serves such sizes with ``mmap`` and returns them with
    ``munmap`` (or trims its per-thread heaps), so every step page-faults them in again:
    about 19,000 minor faults and 0.035 s of kernel time per LightGCN + BPR step on Gowalla,
    a quarter of the step. With one heap, no per-allocation ``mmap`` and a 1 GiB trim
    threshold, the memory is reused and the step drops from about 0.09 s to 0.07 s on this
    project's 2-core CPU (benchmarks/RESULTS.md). The price: freed memory (up to 1 GiB) stays
    with the process. Call it before JAX starts its threads (:func:`initialize` does). No-op
    off Linux/glibc, or when the environment sets ``ITEMJAX_MALLOC_TUNING=0``.
    """
    if os.environ.get("ITEMJAX_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another C library
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _MALLOPT_SETTINGS)
