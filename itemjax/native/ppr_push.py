"""Forward-push PPR (``itemjax/native/ppr_push.cc``) through :mod:`ctypes`: the ``"push"`` backend of
:mod:`itemjax.graph.ppr`.

The C++ source is compiled at ``pip install`` into ``itemjax/native/_ppr_push<EXT_SUFFIX>``, a second
optional setuptools extension (``setup.py``; plain C++17, no jaxlib headers): a shared library with a
plain C interface, not a Python module. When it is missing (no C++ compiler at install time), cannot be
loaded, is a stale build, or ``ITEMJAX_NATIVE=0`` is set, :func:`available` is False, :func:`unavailable_reason`
says why, and :mod:`itemjax.graph.ppr` runs its ``"device"`` backend after one line on stderr
(:func:`notice_fallback`).

Forward push from a source ``s`` on an undirected graph (Andersen, Chung & Lang 2006, non-lazy as in
PPRGo): ``p = 0, r = e_s``; while some node ``v`` has ``r(v) > eps * deg(v)``: ``p(v) += alpha r(v)``,
each neighbour ``w`` gets ``r(w) += (1 - alpha) r(v) / deg(v)``, ``r(v) = 0`` (an isolated node absorbs
its share). At the end ``0 <= pi_s(w) - p(w) <= eps * deg(w)`` for every node ``w``, with ``pi_s`` the PPR
vector of ``pi_s = alpha e_s + (1 - alpha) W^T pi_s``, ``W = D^-1 A``. Per source the work is at most
``1 / (alpha * eps)`` edge visits, independent of the graph's size. ``p`` and ``r`` are float64.

Threads: sources are spread over threads by an atomic counter, each output row is computed by one
thread, so results do not depend on the thread count; ``threads=0`` means ``ITEMJAX_NATIVE_THREADS``
when set, else the CPUs the process may use.
"""

from __future__ import annotations

import ctypes

import numpy as np

from itemjax import native

#: File name stem of the compiled library (``_ppr_push.cpython-311-x86_64-linux-gnu.so`` on Linux).
LIBRARY_STEM = "_ppr_push"
#: ``ItemjaxPprPushAbiVersion()`` of the library this module calls (bumped when a signature changes).
ABI_VERSION = 2
#: Return codes of the C functions (ppr_push.cc).
_ERRORS = {1: "invalid argument", 2: "out of memory", 3: "internal failure"}

_I64P = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
_I32P = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
_F64P = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")


def _declare(library) -> None:
    """Declares the C signatures of ppr_push.cc's functions."""
    library.ItemjaxPprPushTable.restype = ctypes.c_int
    library.ItemjaxPprPushTable.argtypes = [
        _I64P, _I32P, ctypes.c_int64, ctypes.c_int64, ctypes.c_double, ctypes.c_double, ctypes.c_int64,
        ctypes.c_int64, _I32P, ctypes.c_int64, _I32P, ctypes.c_int64]
    library.ItemjaxPprPushScores.restype = ctypes.c_int
    library.ItemjaxPprPushScores.argtypes = [
        _I64P, _I32P, ctypes.c_int64, ctypes.c_double, ctypes.c_double, _I32P, ctypes.c_int64, _F64P,
        ctypes.c_int64]


#: The push library (loaded on first use; see :class:`itemjax.native.NativeLibrary`).
LIBRARY = native.NativeLibrary("the native forward-push PPR library", LIBRARY_STEM, "ItemjaxPprPushAbiVersion",
                               ABI_VERSION, _declare)
#: Whether the library is built and loaded; why not; ``{"available", "path", "reason"}``; how to build it.
available, unavailable_reason, status, fix = LIBRARY.available, LIBRARY.unavailable_reason, LIBRARY.status, LIBRARY.fix


def notice_fallback(what: str, fallback: str) -> None:
    """One line on stderr, once per process and ``what`` (:func:`itemjax.native.notice_fallback`): the push
    library is unavailable (the cause), ``fallback`` runs instead, and how to build it."""
    native.notice_fallback(what, fallback, library=LIBRARY.name, reason=unavailable_reason(), how=fix(),
                           values="exact power-iteration scores, not the push's approximation")


def _graph_arrays(indptr, indices) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    if indptr.ndim != 1 or indptr.size < 1 or indices.ndim != 1:
        raise ValueError("indptr must be 1-D with n_nodes + 1 entries and indices 1-D")
    return indptr, indices


def _check(code: int, name: str) -> None:
    if code != 0:
        raise (MemoryError if code == 2 else ValueError)(f"{name}: {_ERRORS.get(code, f'error {code}')}")


def table(indptr, indices, n_users: int, n_items: int, users, *, alpha: float, eps: float, lo: int, hi: int,
          threads: int = 0) -> np.ndarray:
    """Hard-negative windows by forward push: int32 ``[len(users), hi - lo]``.

    Args:
      indptr, indices: CSR of the bipartite graph ``A = [[0, R], [R^T, 0]]`` (int64 ``[n_users + n_items + 1]``,
        int32 ``[2 nnz(R)]``; users are nodes ``0 .. n_users-1``, item ``i`` is node ``n_users + i``; sorted
        neighbour lists make the training-row test a binary search).
      users: int ``[b]`` user ids in ``[0, n_users)``.
      alpha, eps: restart probability in ``(0, 1]`` and residual threshold ``> 0`` (module docstring).
      lo, hi: ranks kept, ``0 <= lo < hi``.
      threads: 0 = automatic (module docstring).
    Returns:
      Row ``k``: the items ranked ``lo .. hi-1`` among user ``users[k]``'s candidates (items the push touched,
      ``p > 0`` or ``r > 0``, outside its training row, i.e. not its neighbours), by decreasing estimate ``q(w) =
      p(w) + alpha r(w) + f (R_users + (1 - alpha) R_items) deg(w) / nnz(R)`` with ``f = (1 - alpha) / (2 - alpha)``
      (ppr_push.cc, :mod:`itemjax.graph.ppr`), ties by increasing item id; ``-1`` past the last candidate.
    Raises:
      RuntimeError when the library is unavailable; ValueError for invalid arguments (checked in C as well).
    """
    library = LIBRARY.library()
    indptr, indices = _graph_arrays(indptr, indices)
    users = np.ascontiguousarray(users, dtype=np.int32).reshape(-1)
    out = np.empty((users.size, int(hi) - int(lo)), np.int32)
    if users.size == 0:
        return out
    code = library.ItemjaxPprPushTable(indptr, indices, int(n_users), int(n_items), float(alpha), float(eps), int(lo),
                                       int(hi), users, users.size, out, int(threads))
    _check(code, "ItemjaxPprPushTable")
    return out


def scores(indptr, indices, sources, *, alpha: float, eps: float, threads: int = 0) -> np.ndarray:
    """Forward-push estimates ``p`` of each source: float64 ``[len(sources), n_nodes]`` (0 on untouched nodes).

    ``indptr``, ``indices``: CSR of an undirected graph (int64 ``[n_nodes + 1]``, int32); ``sources``: int node ids.
    """
    library = LIBRARY.library()
    indptr, indices = _graph_arrays(indptr, indices)
    n_nodes = indptr.size - 1
    sources = np.ascontiguousarray(sources, dtype=np.int32).reshape(-1)
    out = np.zeros((sources.size, n_nodes), np.float64)
    if sources.size == 0:
        return out
    code = library.ItemjaxPprPushScores(indptr, indices, n_nodes, float(alpha), float(eps), sources, sources.size, out,
                                        int(threads))
    _check(code, "ItemjaxPprPushScores")
    return out
