# This file is part of meas_rbnet.
"""The one runtime of both models: precision choice and its CPU fallbacks (no GPU needed)."""

import math

import pytest
import torch

from lsst.meas.rbnet import runtime


@pytest.fixture
def fresh_cache():
    runtime.clear_scorer_cache()
    yield
    runtime.clear_scorer_cache()


class _Probe:
    """A probe that returns a fixed figure and counts its calls."""

    def __init__(self, error):
        self.error = error
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.error


def test_native_bf16_reads_cpu_flags_and_cuda(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert runtime.native_bf16("cpu") and runtime.native_bf16(torch.device("cpu"))
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset())  # /proc/cpuinfo unreadable
    assert not runtime.native_bf16("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not runtime.native_bf16("cuda")
    assert not runtime.native_bf16("meta")


def test_forced_precision_never_probes(fresh_cache, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    probe = _Probe(0.0)
    for precision, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        got = runtime.checked_dtype("cpu", precision, key=("m", "cpu"), probe=probe, tolerance=0.01)
        assert got == (dtype, None)
    assert probe.calls == 0
    with pytest.raises(ValueError, match="precision"):
        runtime.checked_dtype("cpu", "half", key=("m", "cpu"), probe=probe, tolerance=0.01)


def test_auto_without_bfloat16_units_stays_float32_unprobed(fresh_cache, monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    probe = _Probe(0.0)
    assert runtime.checked_dtype("cpu", "auto", key=("m", "cpu"), probe=probe, tolerance=0.01) == (
        torch.float32,
        None,
    )
    assert probe.calls == 0


def test_auto_probes_once_per_key_and_falls_back(fresh_cache, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    good, bad = _Probe(0.001), _Probe(0.5)
    for _ in range(3):
        assert runtime.checked_dtype("cpu", "auto", key=("a", "cpu"), probe=good, tolerance=0.01) == (
            torch.bfloat16,
            0.001,
        )
        assert runtime.checked_dtype("cpu", "auto", key=("b", "cpu"), probe=bad, tolerance=0.01) == (
            torch.float32,
            0.5,
        )
    assert good.calls == 1 and bad.calls == 1
    # The cached figure is compared with each caller's tolerance.
    assert (
        runtime.checked_dtype("cpu", "auto", key=("b", "cpu"), probe=bad, tolerance=1.0)[0] == torch.bfloat16
    )
    # Another device is another key; clearing the cache probes again.
    runtime.checked_dtype("cpu", "auto", key=("a", "cuda:0"), probe=good, tolerance=0.01)
    assert good.calls == 2
    runtime.clear_scorer_cache()
    runtime.checked_dtype("cpu", "auto", key=("a", "cpu"), probe=good, tolerance=0.01)
    assert good.calls == 3


def test_auto_with_a_nan_probe_keeps_float32(fresh_cache, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    dtype, error = runtime.checked_dtype(
        "cpu", "auto", key=("n", "cpu"), probe=_Probe(math.nan), tolerance=1.0
    )
    assert dtype == torch.float32 and math.isnan(error)
