"""utils/precision.py: when forwards run under bfloat16 autocast."""
import pytest
import torch

from utils.precision import bf16_autocast


def test_bf16_autocast_reads_amp_and_amp_cpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no GPU
    assert bf16_autocast({"amp": True}, gpu) and not bf16_autocast({"amp": False}, gpu)
    assert not bf16_autocast({"amp": True}, cpu)  # the default: fp32 on CPU
    assert bf16_autocast({"amp": True, "amp_cpu": True}, cpu) and bf16_autocast({"amp": True, "amp_cpu": True}, "cpu")
    assert not bf16_autocast({"amp": False, "amp_cpu": True}, cpu)  # amp off switches both off
    assert not bf16_autocast({"amp": True, "amp_cpu": True}, torch.device("meta"))


def test_amp_cpu_auto_is_fp32_without_a_probe_and_bf16_on_cuda():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    called = []
    assert not bf16_autocast({"amp": True, "amp_cpu": "auto"}, cpu)  # training: no probe, fp32
    assert bf16_autocast({"amp": True, "amp_cpu": "auto"}, gpu, probe=called.append)  # CUDA: amp decides
    assert not bf16_autocast({"amp": True, "amp_cpu": False}, cpu, probe=called.append)
    assert called == []  # an explicit setting or CUDA never times anything


class _Clock:
    """A fake perf_counter that only the probes advance: timings are exact, not the shared machine's."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _fake_probe(fp32_s, bf16_s, calls, clock=None):
    def probe(bf16):
        calls.append(bf16)
        if clock is not None:
            clock.now += bf16_s if bf16 else fp32_s
    return probe


@pytest.fixture
def clock(monkeypatch):
    import time
    from types import SimpleNamespace

    import utils.precision as precision

    c = _Clock()
    monkeypatch.setattr(precision, "time", SimpleNamespace(perf_counter=c, strftime=time.strftime))
    return c


def test_auto_picks_the_measured_faster_precision_and_caches_it(tmp_path, monkeypatch, caplog, clock):
    import json
    import logging

    from utils.precision import FORCE_ENV, choose_cpu_bf16, precision_cache_path

    monkeypatch.delenv(FORCE_ENV, raising=False)
    monkeypatch.setenv("TASKDIFFUSION_CACHE", str(tmp_path))
    calls = []
    with caplog.at_level(logging.INFO, logger="taskdiffusion"):
        fast = choose_cpu_bf16(_fake_probe(0.03, 0.01, calls, clock), key="model A")
    assert fast.bf16 and not fast.cached and fast.fp32_s > fast.bf16_s
    assert set(calls) == {True, False}  # both were timed
    assert "amp_cpu auto: CPU inference in bf16" in caplog.text and "measured now" in caplog.text
    entry = next(iter(json.loads(precision_cache_path().read_text()).values()))
    assert entry["bf16"] is True
    calls.clear()
    again = choose_cpu_bf16(_fake_probe(0.03, 0.01, calls, clock), key="model A")
    assert again.bf16 and again.cached and calls == []  # from the cache: no timing
    slow = choose_cpu_bf16(_fake_probe(0.01, 0.03, calls, clock), key="model B")  # another model: timed again
    assert not slow.bf16 and calls
    calls.clear()
    tie = choose_cpu_bf16(_fake_probe(0.021, 0.02, calls, clock), key="model C", use_cache=False)
    assert not tie.bf16  # within MIN_SPEEDUP: the exact fp32 is kept


def test_forced_choice_skips_the_timing(monkeypatch):
    from utils.precision import FORCE_ENV, choose_cpu_bf16

    calls = []
    monkeypatch.setenv(FORCE_ENV, "bf16")
    assert choose_cpu_bf16(_fake_probe(0.0, 0.0, calls), key="x").bf16 and calls == []
    monkeypatch.setenv(FORCE_ENV, "fp32")
    assert not bf16_autocast({"amp": True}, "cpu", probe=_fake_probe(0.0, 0.0, calls)) and calls == []


@pytest.mark.parametrize("value,expected", [("auto", "auto"), ("AUTO", "auto"), ("true", True), ("false", False),
                                            ("3", None), ("fast", None)])
def test_amp_cpu_key_accepts_true_false_auto_only(repo_root, value, expected):
    from engine.config import load_config
    from utils.config import ConfigError

    path = str(repo_root / "configs" / "demo" / "synthetic_pascal.yml")
    if expected is None:
        with pytest.raises(ConfigError, match="amp_cpu"):
            load_config(path, opts=[f"amp_cpu={value}"])
    else:
        assert load_config(path, opts=[f"amp_cpu={value}"]).amp_cpu == expected
    assert load_config(path).amp_cpu == "auto"  # the default
