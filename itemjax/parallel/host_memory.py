"""Host memory settings for XLA's CPU backend on Linux with glibc, applied once per process.

* :func:`tune_host_allocator` (``mallopt``): freed buffers stay in the heap instead of going back to
  the kernel, so a step does not page-fault its temporaries in again;
* :func:`restart_with_huge_pages` (the tunable ``glibc.malloc.hugetlb=1``, read by glibc at process
  start only): malloc's memory is backed by transparent huge pages, so a step's buffers cost far fewer
  page faults and its random row gathers far fewer TLB misses.

Both are skipped when the environment sets ``ITEMJAX_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import os
import platform
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


#: The glibc tunable (glibc 2.35 and newer) that makes malloc ``madvise(MADV_HUGEPAGE)`` the memory it takes
#: from the kernel, and the kernel file that says whether transparent huge pages need that advice.
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def transparent_huge_pages_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode (``always``, ``madvise`` or ``never``: the bracketed word of
    ``path``), or None where the file is missing or unreadable."""
    try:
        with open(path) as f:
            words = f.read().split()
    except OSError:
        return None
    chosen = [w.strip("[]") for w in words if w.startswith("[") and w.endswith("]")]
    return chosen[0] if chosen else None


def huge_pages_environment(environ=None, *, libc: tuple | None = None, thp_mode: str | None = None) -> dict | None:
    """The environment to restart this process with so that glibc's malloc uses huge pages, or None when
    a restart would change nothing.

    None unless: ``ITEMJAX_MALLOC_TUNING`` is not ``0``; the C library is glibc 2.35 or newer
    (``libc``, default :func:`platform.libc_ver`); the kernel gives huge pages on advice only
    (``thp_mode`` ``madvise``, default :func:`transparent_huge_pages_mode`: under ``always`` they come
    without it, under ``never`` not at all); and ``GLIBC_TUNABLES`` does not set ``glibc.malloc.hugetlb``
    yet (so a restarted process never restarts again). Otherwise ``environ`` (default ``os.environ``)
    with :data:`HUGE_PAGES_TUNABLE` appended to ``GLIBC_TUNABLES``.
    """
    environ = dict(os.environ if environ is None else environ)
    if environ.get("ITEMJAX_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    name, version = libc if libc is not None else platform.libc_ver()
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None
    if name != "glibc" or major_minor < (2, 35):
        return None
    if (thp_mode if thp_mode is not None else transparent_huge_pages_mode()) != "madvise":
        return None
    environ["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE
    return environ


def restart_with_huge_pages() -> None:
    """Replace this process by the same command under :func:`huge_pages_environment` (``os.execve`` of
    ``sys.orig_argv``); return at once where that is None.

    For a process's entry point only (``itemjax``, ``python -m itemjax``, ``experiments/*.py``,
    ``benchmarks/*.py``), before it imports JAX: the process starts again from its first line. On
    gowalla it cut a LightGCN + BPR step's minor page faults from ~2,000 to 3 and a GAT step's from
    ~12,000-31,000 to under 100, and both steps by 10-20% (benchmarks/RESULTS.md). Where the restart
    fails (``execve`` refused), the process goes on without huge pages.
    """
    environ = huge_pages_environment()
    if environ is None or not sys.executable or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, environ)
    except OSError:
        return


def set_up_process() -> None:
    """The host memory set-up of a training process, for a script that is its own entry point
    (``benchmarks/*.py``): :func:`restart_with_huge_pages`, then :func:`tune_host_allocator`. Call it
    before the first JAX computation."""
    restart_with_huge_pages()
    tune_host_allocator()
