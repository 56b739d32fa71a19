"""benchmarks/step_profile.py's trace reductions, on synthetic Perfetto events (no profiling here)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

STEP_PROFILE = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "step_profile.py"
spec = importlib.util.spec_from_file_location("step_profile_benchmark", STEP_PROFILE)
step_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(step_profile)

EVENTS = [
    {"ph": "X", "name": "dot.2", "dur": 100.0}, {"ph": "X", "name": "dot.7", "dur": 50.0},
    {"ph": "X", "name": "dot.2", "dur": 25.0}, {"ph": "X", "name": "ffi_call", "dur": 300.0},
    {"ph": "X", "name": "wrapped_reduce-window.14", "dur": 7.0},
    {"ph": "X", "name": "$train.py:12 run", "dur": 1000.0}, {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 900.0},
]


def test_totals_by_name_skip_non_operations_and_sum_per_name():
    totals = step_profile.totals_by_name(EVENTS)
    assert totals == {"dot.2": (125.0, 2), "dot.7": (50.0, 1), "ffi_call": (300.0, 1),
                      "wrapped_reduce-window.14": (7.0, 1)}
    assert step_profile.totals_by_name(EVENTS, operations_only=False)["$train.py:12 run"] == (1000.0, 1)


def test_totals_by_kind_sum_over_numeric_suffixes_only():
    kinds = step_profile.totals_by_kind(step_profile.totals_by_name(EVENTS))
    assert kinds == {"dot": (175.0, 3), "ffi_call": (300.0, 1), "wrapped_reduce-window": (7.0, 1)}
    assert step_profile.totals_by_kind({"fusion.1.2": (1.0, 1), "a.b": (2.0, 1)}) == {"fusion.1": (1.0, 1),
                                                                                       "a.b": (2.0, 1)}


@pytest.mark.parametrize("name", ["dot", "dot.", "dot.x1"])
def test_names_without_a_numeric_suffix_are_their_own_kind(name):
    assert step_profile.totals_by_kind({name: (3.0, 1)}) == {name: (3.0, 1)}
