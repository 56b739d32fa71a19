"""Fixtures shared by the test modules: a tiny synthetic interaction file, the environment of
subprocess runs (CPU, one persistent compilation cache), float64 JAX (``x64``) and central
finite differences for gradient references; and JAX's compilation cache for the session."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

# JAX's persistent compilation cache for the test session (set before any test module imports
# jax): compiling dominates the unit tests, and a rerun finds every executable already built.
# The key covers the jax version, the backend and the flags, so a stale entry is never used;
# JAX_COMPILATION_CACHE_DIR set by the caller wins, and subprocess tests use their own cache.
# Under pytest-xdist (-n 2) the workers inherit this folder from the controller and share it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax-compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.05")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def write_tiny_interactions(path: pathlib.Path, *, n_users=60, n_items=80, n_rows=1500, seed=0) -> pathlib.Path:
    """``user,item`` CSV with distinct pairs; item popularity is skewed (geometric) like real data."""
    rng = np.random.default_rng(seed)
    pairs = set()
    while len(pairs) < n_rows:
        pairs.add((int(rng.integers(n_users)), int(min(n_items - 1, rng.geometric(0.04) - 1))))
    path.write_text("user,item\n" + "".join(f"u{u},i{i}\n" for u, i in sorted(pairs)))
    return path


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    return write_tiny_interactions(tmp_path_factory.mktemp("data") / "tiny.csv")


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """Environment of the subprocesses: CPU, and a persistent compilation cache shared by them."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax-cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return env


@pytest.fixture
def x64():
    """JAX in float64 for the test's duration (float64 references compared at tight tolerances)."""
    import jax

    with jax.enable_x64(True):
        yield


def central_differences(fn, x, eps=1e-6):
    """``d fn / d x`` of a scalar function of a numpy array, by central differences (float64)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (float(fn(up)) - float(fn(down))) / (2 * eps)
    return grad
