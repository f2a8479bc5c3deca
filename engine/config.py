"""The config loader every program uses: utils.config's loader with every package's cross-checks.

Why in the engine: the checks of a config need the dataset and task tables, the model names, the loss
weights' and the metrics' rules, which live in data/, models/, losses/ and evaluation/. Each package
registers its own check when its config_checks module is imported; this module imports them all, in the
order their checks run, so no caller can load a config with some of them silently missing. main.py,
infer.py, the tools, the benchmarks and the tests load configs through `load_config` here.
"""
from __future__ import annotations

# The imports register the checks; they run in this order (data first: the others read what it derives).
import data.config_checks  # noqa: F401  isort: skip
import losses.config_checks  # noqa: F401  isort: skip
import losses.balancing  # noqa: F401  isort: skip  (the balancing methods and their options)
import utils.ema  # noqa: F401  isort: skip  (ema.select against ema.evaluate)
import models.config_checks  # noqa: F401  isort: skip
import utils.optim  # noqa: F401  isort: skip  (optimizer_kwargs extras)
import evaluation.config_checks  # noqa: F401  isort: skip
from utils.config import SCHEMA, ConfigError, load_config  # noqa: F401  (with every check registered above)

__all__ = ["load_config", "ConfigError", "SCHEMA"]
