"""The native CPU CSR kernel: ``M @ x`` and ``M^T @ x`` for a CSR matrix ``M``, called from XLA through ``jax.ffi``.

The kernel (``itemjax/native/csr_spmm.cc``) is compiled at ``pip install`` into
``itemjax/native/_csr_spmm<EXT_SUFFIX>`` (an optional setuptools extension, see ``setup.py``): a plain
shared library of XLA FFI handlers, loaded here with :mod:`ctypes` (it is not a Python module) and
registered once per process with :func:`jax.ffi.register_ffi_target` for the CPU platform. When the
library is missing (no C++ compiler at install time), cannot be loaded, or ``ITEMJAX_NATIVE=0`` is
set, :func:`available` is False, :func:`unavailable_reason` says why, and the callers in
:mod:`itemjax.graph.propagation` and :mod:`itemjax.graph.ppr` fall back to the pure-JAX ``"csr"`` /
``"device"`` paths after one line on stderr (:func:`notice_fallback`).

:func:`spmm` is the raw product (no gradient rule; the differentiable wrappers are in
:mod:`itemjax.graph.propagation`). Element types: ``x`` float32, bfloat16 or float64 (``data`` is
cast to float32, float32 and float64 respectively, and the sums run in that type, so bfloat16 inputs
are summed in float32 and rounded once); ``indptr`` and ``indices`` int32. Threads: output rows are
split into ranges of about equal cost; ``threads=0`` means ``ITEMJAX_NATIVE_THREADS`` when set,
else the CPUs the process may use, fewer for small products. Each output element is summed by one
thread in entry order, so the result does not depend on the thread count.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import pathlib
import threading

import jax
import jax.numpy as jnp
import numpy as np

from itemjax.runio import log

#: File name stem of the compiled library (``_csr_spmm.cpython-311-x86_64-linux-gnu.so`` on Linux).
LIBRARY_STEM = "_csr_spmm"
#: ``ItemjaxNativeAbiVersion()`` of the library this module calls (bumped when a handler's signature changes).
ABI_VERSION = 3
#: FFI target name and C symbol of each ``(transpose, x dtype)``.
TARGETS = {
    (False, "float32"): ("itemjax_csr_spmm_f32", "ItemjaxCsrSpmmF32"),
    (False, "bfloat16"): ("itemjax_csr_spmm_bf16", "ItemjaxCsrSpmmBf16"),
    (False, "float64"): ("itemjax_csr_spmm_f64", "ItemjaxCsrSpmmF64"),
    (True, "float32"): ("itemjax_csr_spmm_t_f32", "ItemjaxCsrSpmmTF32"),
    (True, "bfloat16"): ("itemjax_csr_spmm_t_bf16", "ItemjaxCsrSpmmTBf16"),
    (True, "float64"): ("itemjax_csr_spmm_t_f64", "ItemjaxCsrSpmmTF64"),
}
#: FFI target name and C symbol of the fused GAT attention passes (float32; :func:`gat_forward`, :func:`gat_backward`).
GAT_TARGETS = {
    "forward": ("itemjax_gat_forward_f32", "ItemjaxGatForwardF32"),
    "backward": ("itemjax_gat_backward_f32", "ItemjaxGatBackwardF32"),
    "layer_forward": ("itemjax_gat_layer_forward_f32", "ItemjaxGatLayerForwardF32"),
    "layer_backward": ("itemjax_gat_layer_backward_f32", "ItemjaxGatLayerBackwardF32"),
}
#: Feature widths the GAT passes are compiled for (their sums held in registers).
GAT_WIDTHS = (16, 32, 64, 128)
#: How to build the kernel, named by the fallback notice.
FIX = ("install a C++ compiler (e.g. apt-get install g++) and reinstall itemjax (in a checkout: "
       "pip install --force-reinstall --no-deps -e .)")

_noticed: set = set()  # fallbacks already reported (one line each per process)
_noticed_lock = threading.Lock()


def library_path(stem: str = LIBRARY_STEM) -> pathlib.Path | None:
    """The compiled library ``stem`` next to this module (the first match of ``stem`` plus an
    extension-module suffix of this interpreter), or None when it was not built; :data:`LIBRARY_STEM`
    by default (:mod:`itemjax.native.ppr_push` asks for its own)."""
    here = pathlib.Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


class NativeLibrary:
    """One optional compiled library of this package, loaded with :mod:`ctypes` once per process.

    ``name``: what it is called in messages; ``stem``: its file name stem (:func:`library_path`);
    ``abi_symbol`` / ``abi_version``: the C function returning its ABI version and the version this module
    calls (a stale build is refused, not called);
    ``setup(library)``: declares signatures or registers FFI targets, raising on failure. ``state`` holds
    ``{"library", "path", "reason"}`` once loaded: the library, or ``library=None`` and why it is unavailable
    (``ITEMJAX_NATIVE=0``, not built, not loadable, stale, setup failed).
    """

    def __init__(self, name: str, stem: str, abi_symbol: str, abi_version: int, setup):
        self.name, self.stem, self.abi_symbol, self.abi_version, self.setup = name, stem, abi_symbol, abi_version, setup
        self.state: dict = {}
        self._lock = threading.Lock()

    def path(self) -> pathlib.Path | None:
        """The compiled file, or None when it was not built."""
        return library_path(self.stem)

    def open(self) -> dict:
        """Loads the library afresh (no caching): ``{"library", "path", "reason"}``."""
        if os.environ.get("ITEMJAX_NATIVE", "").strip() == "0":
            return {"library": None, "path": None, "reason": "disabled by ITEMJAX_NATIVE=0"}
        path = self.path()
        if path is None:
            return {"library": None, "path": None,
                    "reason": f"itemjax/native/{self.stem}*.so was not built when itemjax was installed"}
        try:
            library = ctypes.CDLL(str(path))
            getattr(library, self.abi_symbol).restype = ctypes.c_int
            version = getattr(library, self.abi_symbol)()
        except (OSError, AttributeError) as error:
            return {"library": None, "path": path, "reason": f"{path.name} could not be loaded ({error})"}
        if version != self.abi_version:
            return {"library": None, "path": path,
                    "reason": f"{path.name} is a stale build (ABI {version}, this itemjax needs {self.abi_version})"}
        try:
            self.setup(library)
        except Exception as error:  # noqa: BLE001 - any failure here means: use the fallback, and say why
            return {"library": None, "path": path, "reason": f"setting up {path.name} failed ({error})"}
        return {"library": library, "path": path, "reason": None}

    def load(self) -> dict:
        """:meth:`open` on first call, the same state after."""
        with self._lock:
            if not self.state:
                self.state.update(self.open())
            return self.state

    def available(self) -> bool:
        return self.load()["library"] is not None

    def unavailable_reason(self) -> str | None:
        return self.load()["reason"]

    def status(self) -> dict:
        """``{"available": bool, "path": str | None, "reason": str | None}`` (recorded in a run's config.json)."""
        state = self.load()
        return {"available": state["library"] is not None,
                "path": None if state["path"] is None else str(state["path"]), "reason": state["reason"]}

    def fix(self) -> str:
        """What to do to use the library: unset ``ITEMJAX_NATIVE=0``, or :data:`FIX`."""
        reason = self.unavailable_reason() or ""
        return "unset ITEMJAX_NATIVE" if reason.startswith("disabled") else FIX

    def library(self):
        """The loaded library; RuntimeError naming it, the cause and the fix when unavailable."""
        state = self.load()
        if state["library"] is None:
            raise RuntimeError(f"{self.name} is unavailable ({state['reason']}); to use it, {self.fix()}")
        return state["library"]


def _register_targets(library) -> None:
    """Registers every FFI handler of the CSR kernel with XLA (CPU)."""
    try:
        for name, symbol in (*TARGETS.values(), *GAT_TARGETS.values()):
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    except Exception as error:
        raise RuntimeError(f"registering with XLA: {error}") from error


#: The CSR kernel's library (``_csr_spmm``).
KERNEL = NativeLibrary("the native CSR kernel", LIBRARY_STEM, "ItemjaxNativeAbiVersion", ABI_VERSION, _register_targets)


def available() -> bool:
    """Whether the native kernel is built, loaded and registered with XLA (loads it on first call)."""
    return KERNEL.available()


def unavailable_reason() -> str | None:
    """Why the native kernel cannot be used (None when :func:`available`)."""
    return KERNEL.unavailable_reason()


def status() -> dict:
    """``{"available": bool, "path": str | None, "reason": str | None}`` (recorded in a run's config.json)."""
    return KERNEL.status()


def fix() -> str:
    """What to do to use the kernel: unset ``ITEMJAX_NATIVE=0``, or :data:`FIX`."""
    return KERNEL.fix()


def notice_fallback(what: str, fallback: str, *, library: str = "the native CSR kernel", reason: str | None = None,
                    how: str | None = None, values: str = "same values") -> None:
    """One line on stderr, once per process and ``what``: ``library`` is unavailable (``reason``, default
    :func:`unavailable_reason`), ``fallback`` runs instead (``values``: how its results compare), and how to
    build it (``how``, default :func:`fix`). :mod:`itemjax.native.ppr_push` passes its own library's."""
    with _noticed_lock:
        if what in _noticed:
            return
        _noticed.add(what)
    log(f"itemjax: {what}: {library} is unavailable ({unavailable_reason() if reason is None else reason}); "
        f"using {fallback} instead ({values}); to use it, {fix() if how is None else how}")


def supported_dtype(dtype) -> bool:
    """Whether :func:`spmm` takes ``x`` of this dtype without a cast (float32, bfloat16, float64)."""
    return jnp.dtype(dtype).name in ("float32", "bfloat16", "float64")


def spmm(indptr, indices, data, x, *, transpose: bool = False, n_cols: int | None = None, threads: int = 0):
    """``M @ x`` (or ``M^T @ x`` with ``transpose``) for the CSR matrix ``M`` of ``indptr``, ``indices``, ``data``.

    Args:
      indptr: int32 ``[m + 1]``; indices: int32 ``[nnz]`` (column ids in ``[0, n)``; an entry outside is
        skipped); data: ``[nnz]``, cast to float32 (float64 when ``x`` is float64).
      x: ``[n, d]`` (``[m, d]`` with ``transpose``), float32, bfloat16 or float64.
      transpose: multiply by ``M^T``; ``n_cols`` (= ``n``, the columns of ``M``) is then required.
      threads: threads of the kernel; 0 = automatic (module docstring).

    Returns:
      ``[m, d]`` (``[n, d]`` with ``transpose``) in ``x.dtype``. No gradient rule: differentiate
      through :func:`itemjax.graph.propagation.csr_matmul` or :func:`~itemjax.graph.propagation.propagate`.
    Raises:
      RuntimeError when the kernel is unavailable (check :func:`available` first);
      TypeError / ValueError for an unsupported dtype or shape.
    """
    KERNEL.library()  # RuntimeError with the cause and the fix when unavailable
    x = jnp.asarray(x)
    if not supported_dtype(x.dtype):
        raise TypeError(f"native spmm takes float32, bfloat16 or float64 x, got {x.dtype}; cast it first")
    if x.ndim != 2:
        raise ValueError(f"native spmm needs a 2-D x [rows, d], got shape {x.shape}")
    m = indptr.shape[0] - 1
    if transpose:
        if n_cols is None:
            raise ValueError("native spmm with transpose=True needs n_cols (the columns of the matrix)")
        out_rows = int(n_cols)
        if x.shape[0] != m:
            raise ValueError(f"native spmm transpose: x has {x.shape[0]} rows, the matrix {m}")
    else:
        out_rows = m
    accumulate = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
    name, _ = TARGETS[(bool(transpose), jnp.dtype(x.dtype).name)]
    call = jax.ffi.ffi_call(name, jax.ShapeDtypeStruct((out_rows, x.shape[1]), x.dtype), vmap_method="sequential")
    return call(jnp.asarray(indptr, jnp.int32), jnp.asarray(indices, jnp.int32), jnp.asarray(data, accumulate), x,
                threads=np.int64(threads))


def gat_supported(x) -> bool:
    """Whether :func:`gat_forward` / :func:`gat_backward` take ``x`` (the kernel is available, ``x`` is a
    float32 ``[n, d]`` array with ``d`` in :data:`GAT_WIDTHS`); other inputs use the composed CSR path."""
    return (available() and jnp.dtype(x.dtype) == jnp.float32 and x.ndim == 2
            and int(x.shape[1]) in GAT_WIDTHS)


def _check_gat_x(x, what: str, instead: str) -> None:
    """ValueError naming ``instead`` (the differentiable wrapper) unless :func:`gat_supported` takes ``x``."""
    if not gat_supported(x):
        raise ValueError(f"the native GAT {what} take float32 x [n, d] with d in {GAT_WIDTHS} (and a built kernel); "
                         f"got {x.dtype} {tuple(x.shape)}: use itemjax.graph.propagation.{instead}")


def _gat_arguments(indptr, indices, x, src_score, dst_score):
    _check_gat_x(x, "passes", "propagate_attention")
    return (jnp.asarray(indptr, jnp.int32), jnp.asarray(indices, jnp.int32), x,
            jnp.asarray(src_score, jnp.float32), jnp.asarray(dst_score, jnp.float32))


def gat_forward(indptr, indices, x, src_score, dst_score, *, negative_slope: float, threads: int = 0):
    """One head of GAT attention propagation over a square CSR pattern, one pass per row.

    For the entries ``c`` of row ``r`` (``pre = dst[r] + src[c]``, ``l = LeakyReLU(pre)``)::

        m_r = max_c l_rc,  w_rc = exp(l_rc - m_r),  den_r = sum_c w_rc,  y_r = sum_c (w_rc / den_r) x_c

    (``m_r = 0``, ``den_r = 1``, ``y_r = 0`` on a row without entries).

    Args:
      indptr: int32 ``[n + 1]``; indices: int32 ``[nnz]``; x: float32 ``[n, d]``, ``d`` in :data:`GAT_WIDTHS`;
      src_score, dst_score: ``[n]``; negative_slope: LeakyReLU slope; threads: 0 = automatic.
    Returns:
      ``(y [n, d], row_max [n], den [n])``, float32; the last two are :func:`gat_backward`'s residuals.
    """
    args = _gat_arguments(indptr, indices, x, src_score, dst_score)
    n, d = x.shape
    out = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32),
           jax.ShapeDtypeStruct((n,), jnp.float32))
    call = jax.ffi.ffi_call(GAT_TARGETS["forward"][0], out, vmap_method="sequential")
    return call(*args, slope=np.float32(negative_slope), threads=np.int64(threads))


def gat_backward(indptr, indices, x, src_score, dst_score, y, row_max, den, y_bar, *, negative_slope: float,
                 threads: int = 0):
    """The VJP of :func:`gat_forward` for a SYMMETRIC pattern (``c in N(r)`` iff ``r in N(c)``), two passes.

    With ``alpha_rc = w_rc / den_r``, ``q_r = y_bar_r . y_r``, ``lambda_rc = dLeakyReLU/dpre`` and the softmax's
    ``l_bar_rc = alpha_rc (y_bar_r . x_c - q_r)``::

        dst_bar_r = sum_{c in N(r)} lambda_rc l_bar_rc                 (rows r; gathers x_c)
        src_bar_c = sum_{r in N(c)} lambda_rc l_bar_rc,  x_bar_c = sum_{r in N(c)} alpha_rc y_bar_r
                                                                       (rows c; gathers y_bar_r)

    Returns ``(x_bar [n, d], src_bar [n], dst_bar [n])``, float32. On a non-symmetric pattern the column sums
    would be wrong: use :func:`itemjax.graph.propagation.propagate_attention`, which only calls this on the
    (symmetric) bipartite graph.
    """
    args = _gat_arguments(indptr, indices, x, src_score, dst_score)
    n, d = x.shape
    out = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32),
           jax.ShapeDtypeStruct((n,), jnp.float32))
    call = jax.ffi.ffi_call(GAT_TARGETS["backward"][0], out, vmap_method="sequential")
    return call(*args, jnp.asarray(y, jnp.float32), jnp.asarray(row_max, jnp.float32), jnp.asarray(den, jnp.float32),
                jnp.asarray(y_bar, jnp.float32), slope=np.float32(negative_slope), threads=np.int64(threads))


def _gat_layer_arguments(indptr, indices, x, a_src, a_dst):
    _check_gat_x(x, "layer passes", "gat_layer")
    d = int(x.shape[1])
    a_src, a_dst = (jnp.asarray(a, jnp.float32) for a in (a_src, a_dst))
    if a_src.shape != (d,) or a_dst.shape != (d,):
        raise ValueError(f"a_src and a_dst must have shape ({d},) for x of width {d}; got {a_src.shape}, {a_dst.shape}")
    return jnp.asarray(indptr, jnp.int32), jnp.asarray(indices, jnp.int32), x, a_src, a_dst


def gat_layer_forward(indptr, indices, x, a_src, a_dst, *, negative_slope: float, eps: float, threads: int = 0):
    """One head's GAT layer in two native passes: the scores, then :func:`gat_forward` and the rows normalised.

    ::

        src_r = a_src . x_r,  dst_r = a_dst . x_r                               (one pass over x)
        y_r   = gat_forward(x, src, dst)_r,  s_r = max(||y_r||_2, eps),  out_r = y_r / s_r

    Args:
      indptr: int32 ``[n + 1]``; indices: int32 ``[nnz]``; x: float32 ``[n, d]``, ``d`` in :data:`GAT_WIDTHS`;
      a_src, a_dst: ``[d]``; negative_slope: LeakyReLU slope; eps: the smallest norm divided by (> 0);
      threads: 0 = automatic.
    Returns:
      ``(y [n, d], out [n, d], src [n], dst [n], row_max [n], den [n], scale [n])``, float32: ``y`` (the next
      layer's input in GAT) and ``out`` (the layer's output); all but ``out`` are :func:`gat_layer_backward`'s
      residuals.
    """
    args = _gat_layer_arguments(indptr, indices, x, a_src, a_dst)
    n, d = x.shape
    vector, matrix = jax.ShapeDtypeStruct((n,), jnp.float32), jax.ShapeDtypeStruct((n, d), jnp.float32)
    out = (matrix, matrix, vector, vector, vector, vector, vector)
    call = jax.ffi.ffi_call(GAT_TARGETS["layer_forward"][0], out, vmap_method="sequential")
    return call(*args, slope=np.float32(negative_slope), eps=np.float32(eps), threads=np.int64(threads))


def gat_layer_backward(indptr, indices, x, a_src, a_dst, src, dst, y, row_max, den, scale, y_bar, out_bar, *,
                       negative_slope: float, eps: float, threads: int = 0):
    """The VJP of :func:`gat_layer_forward` (cotangents ``y_bar`` and ``out_bar``) for a SYMMETRIC pattern, in
    :func:`gat_backward`'s two passes.

    Pass A adds ``out_bar``'s share to ``y_bar`` (``(out_bar_r - out_r (out_r . out_bar_r)) / s_r`` where
    ``s_r > eps``, else ``out_bar_r / eps``) and keeps the sum for pass B; pass B adds the scores' terms,
    ``x_bar_c += src_bar_c a_src + dst_bar_c a_dst``.

    Returns ``(x_bar [n, d], src_bar [n], dst_bar [n])``, float32: the gradients of ``x`` (complete) and of the
    scores, from which the caller forms ``a_src_bar = x^T src_bar`` and ``a_dst_bar = x^T dst_bar``.
    """
    args = _gat_layer_arguments(indptr, indices, x, a_src, a_dst)
    n, d = x.shape
    result = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32),
              jax.ShapeDtypeStruct((n,), jnp.float32))
    call = jax.ffi.ffi_call(GAT_TARGETS["layer_backward"][0], result, vmap_method="sequential")
    residuals = (jnp.asarray(v, jnp.float32) for v in (src, dst, y, row_max, den, scale, y_bar, out_bar))
    return call(*args, *residuals, slope=np.float32(negative_slope), eps=np.float32(eps), threads=np.int64(threads))
