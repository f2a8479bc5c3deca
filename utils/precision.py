"""Which numeric precision a forward pass runs in, decided from the config in one place.

Why here and not in the config loader: training, evaluation, infer.py and the tools all ask the same
question for their device, and the answer depends on the device as well as on the `amp` / `amp_cpu`
keys (docs/configs.md), so it belongs next to the code that runs models, not to YAML loading.

`amp_cpu: auto` (the default) is fp32 for training and, for inference, bf16 autocast only where it is
measured faster on this CPU. A CPU flag is not enough: on an Intel Xeon with avx512_bf16 but no AMX,
bf16 inference was measured 1.7x slower than fp32, on an AMD EPYC with avx512_bf16 1.7x faster. So the
first inference of a config on a machine times both precisions on the configured model (a short probe,
`choose_cpu_bf16`), and the answer is cached per CPU model, thread count, torch version and model
(`$TASKDIFFUSION_CACHE` or ~/.cache/taskdiffusion, file `precision.json`). The callers build the probe
(engine/precision.py), since only they know the model; this module only times, decides, caches and logs.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

__all__ = ["bf16_autocast", "amp_cpu_setting", "choose_cpu_bf16", "PrecisionChoice", "cpu_model_name",
           "precision_cache_path", "FORCE_ENV", "MIN_SPEEDUP"]

FORCE_ENV = "TASKDIFFUSION_AMP_CPU_AUTO"  # 'fp32' / 'bf16': what `auto` picks without timing (CI, clusters)
MIN_SPEEDUP = 1.1  # bf16 must be at least this much faster: a tie within noise keeps fp32 (exact numbers)
LOGGER = "taskdiffusion"


def amp_cpu_setting(cfg: Mapping) -> bool | str:
    """The config's `amp_cpu`: True, False or 'auto'."""
    v = cfg.get("amp_cpu", "auto")
    return "auto" if isinstance(v, str) and v.lower() == "auto" else bool(v)


def bf16_autocast(cfg: Mapping, device, probe: Callable[[bool], None] | None = None, key: str = "") -> bool:
    """Whether forwards on `device` run under bfloat16 autocast: `amp` on CUDA, `amp` and `amp_cpu` on
    CPU; never on other devices.

    amp_cpu 'auto' on CPU: without a probe (training, the trainer's evaluation) fp32; with one (infer.py,
    `--run_mode infer`) bf16 when `choose_cpu_bf16(probe, key)` measures it faster (cached, logged).
    """
    if not bool(cfg.get("amp", True)):
        return False
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        return True
    if kind != "cpu":
        return False
    setting = amp_cpu_setting(cfg)
    if setting != "auto":
        return setting
    if probe is None:
        return False
    return choose_cpu_bf16(probe, key).bf16


@dataclass
class PrecisionChoice:
    bf16: bool
    reason: str
    fp32_s: float | None = None
    bf16_s: float | None = None
    cached: bool = False

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"


def cpu_model_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def precision_cache_path() -> Path:
    root = os.environ.get("TASKDIFFUSION_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "taskdiffusion")
    return Path(root) / "precision.json"


def _cache_key(key: str) -> str:
    import torch

    return f"{cpu_model_name()} | threads {torch.get_num_threads()} | torch {torch.__version__} | {key}"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, entry_key: str, entry: dict) -> None:
    """Atomic update of one entry (a failure to write only costs a new probe next time)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[entry_key] = entry
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".precision.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as err:
        logging.getLogger(LOGGER).warning(f"amp_cpu auto: could not write the cache {path} ({err})")


def time_precisions(probe: Callable[[bool], None], repeats: int = 2) -> tuple[float, float]:
    """(fp32 seconds, bf16 seconds): one warm-up call of each, then `repeats` interleaved timed calls of
    each (round-robin, so both see the same machine state); the minimum of each is returned."""
    probe(False)
    probe(True)
    t = {False: [], True: []}
    for _ in range(max(1, repeats)):
        for bf16 in (False, True):
            t0 = time.perf_counter()
            probe(bf16)
            t[bf16].append(time.perf_counter() - t0)
    return min(t[False]), min(t[True])


def choose_cpu_bf16(probe: Callable[[bool], None], key: str = "", use_cache: bool = True,
                    log: bool = True) -> PrecisionChoice:
    """bf16 autocast or fp32 for CPU inference of one model on this machine, measured and cached.

    probe(bf16) runs one representative inference with bf16 autocast on or off. $TASKDIFFUSION_AMP_CPU_AUTO
    (fp32 / bf16) skips the measurement. bf16 is chosen when it is at least MIN_SPEEDUP times faster.
    """
    logger = logging.getLogger(LOGGER)
    forced = os.environ.get(FORCE_ENV, "").strip().lower()
    if forced in ("fp32", "bf16"):
        choice = PrecisionChoice(forced == "bf16", f"${FORCE_ENV}={forced}")
    else:
        path, entry_key = precision_cache_path(), _cache_key(key)
        hit = _read_cache(path).get(entry_key) if use_cache else None
        if isinstance(hit, dict) and {"bf16", "fp32_s", "bf16_s"} <= set(hit):
            choice = PrecisionChoice(bool(hit["bf16"]), f"measured earlier on this machine ({path})",
                                     hit["fp32_s"], hit["bf16_s"], cached=True)
        else:
            t0 = time.perf_counter()
            fp32_s, bf16_s = time_precisions(probe)
            bf16 = fp32_s >= MIN_SPEEDUP * bf16_s
            choice = PrecisionChoice(bf16, f"measured now in {time.perf_counter() - t0:.1f} s", fp32_s, bf16_s)
            if use_cache:
                _write_cache(path, entry_key, {"bf16": bf16, "fp32_s": fp32_s, "bf16_s": bf16_s,
                                               "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if log:
        timing = ""
        if choice.fp32_s is not None:
            timing = (f": probe fp32 {choice.fp32_s:.3f} s, bf16 {choice.bf16_s:.3f} s "
                      f"(bf16 {choice.fp32_s / max(choice.bf16_s, 1e-12):.2f}x; needs {MIN_SPEEDUP:.2f}x)")
        logger.info(f"amp_cpu auto: CPU inference in {choice.name} on {cpu_model_name()}{timing}, "
                    f"{choice.reason} (set amp_cpu: true/false to choose yourself)")
    return choice
