"""Build of the optional native libraries; everything else is in pyproject.toml.

* ``itemjax/native/csr_spmm.cc`` -> ``itemjax/native/_csr_spmm*.so``: the CSR kernel of ``--backend native``.
* ``itemjax/native/ppr_push.cc`` -> ``itemjax/native/_ppr_push*.so``: forward-push PPR tables of
  ``--ppr-backend push``; plain C++ (no jaxlib headers), loaded with ctypes by itemjax/native/ppr_push.py.

The kernel is an XLA FFI handler library compiled against the headers shipped with jaxlib (a build
requirement, see [build-system] in pyproject.toml). It is an optional extension: without a C++
compiler (or without jaxlib's headers) the build prints a warning and itemjax installs without it,
and ``--backend native`` falls back to the pure-JAX csr path (itemjax/native/__init__.py). The push library is
optional in the same way: without it ``--ppr-backend push`` falls back to the device backend.
Flags: -O3 -std=c++17 and no -march, so that a built wheel runs on any CPU of its platform (the hot
loops carry an AVX2 clone chosen at load time on x86-64 Linux).
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def jaxlib_include_dir():
    """jaxlib's include directory (holding xla/ffi/api/ffi.h), or None when jaxlib is not importable."""
    try:
        from jax import ffi

        return ffi.include_dir()
    except Exception:  # noqa: BLE001 - jax itself may fail to import in a bare build environment
        pass
    try:
        import importlib.util

        spec = importlib.util.find_spec("jaxlib")
        if spec and spec.submodule_search_locations:
            path = os.path.join(list(spec.submodule_search_locations)[0], "include")
            if os.path.isfile(os.path.join(path, "xla", "ffi", "api", "ffi.h")):
                return path
    except Exception:  # noqa: BLE001
        pass
    return None


#: The library's C symbols (itemjax/native/__init__.py's TARGETS and the ABI check).
SYMBOLS = ["ItemjaxCsrSpmmF32", "ItemjaxCsrSpmmBf16", "ItemjaxCsrSpmmF64", "ItemjaxCsrSpmmTF32", "ItemjaxCsrSpmmTBf16",
           "ItemjaxCsrSpmmTF64", "ItemjaxGatForwardF32", "ItemjaxGatBackwardF32", "ItemjaxNativeAbiVersion"]
#: The push library's C symbols (itemjax/native/ppr_push.py).
PUSH_SYMBOLS = ["ItemjaxPprPushTable", "ItemjaxPprPushScores", "ItemjaxPprPushAbiVersion"]
#: Extension name of the push library (plain C++, no jaxlib headers).
PUSH_EXTENSION = "itemjax.native._ppr_push"


class BuildNative(build_ext):
    """build_ext that finds jaxlib's FFI headers at build time and skips the kernel (with a warning) without them."""

    def build_extension(self, ext):
        if ext.name == PUSH_EXTENSION:
            if self.compiler.compiler_type == "msvc":
                ext.extra_compile_args = ["/O2", "/std:c++17", "/EHsc"]
            else:
                ext.extra_compile_args = ["-O3", "-std=c++17", "-g0"]
                if sys.platform.startswith("linux"):
                    ext.extra_compile_args.append("-pthread")
                    ext.extra_link_args = ["-pthread"]
            super().build_extension(ext)
            return
        include = jaxlib_include_dir()
        if include is None:
            print("warning: itemjax: jaxlib's XLA FFI headers not found; building without the native CSR kernel "
                  "(--backend native will fall back to csr)", file=sys.stderr)
            return
        if self.compiler.compiler_type == "msvc":
            ext.extra_compile_args = ["/O2", "/std:c++17", "/EHsc", f"/I{include}"]
        else:
            # -isystem: jaxlib's headers are not ours to warn about; -g0: no debug info (a 2 MB library otherwise)
            ext.extra_compile_args = ["-O3", "-std=c++17", "-g0", "-isystem", include]
            if sys.platform.startswith("linux"):
                ext.extra_link_args = ["-pthread"]
        super().build_extension(ext)

    def get_export_symbols(self, ext):
        # a ctypes library of FFI handlers, not a Python module: its C symbols instead of PyInit_
        # (used by MSVC's linker only; on Unix every extern "C" symbol is exported)
        return PUSH_SYMBOLS if ext.name == PUSH_EXTENSION else SYMBOLS


setup(
    ext_modules=[Extension("itemjax.native._csr_spmm", sources=["itemjax/native/csr_spmm.cc"],
                           depends=["itemjax/native/threads.h"], language="c++",
                           optional=True),
                 Extension(PUSH_EXTENSION, sources=["itemjax/native/ppr_push.cc"], depends=["itemjax/native/threads.h"],
                           language="c++", optional=True)],
    cmdclass={"build_ext": BuildNative},
)
