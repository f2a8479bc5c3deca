"""Regional compilation: torch.compile the pieces of a model that repeat, not the whole call.

Why: compiling the whole TaskDiffusion model traces the unrolled DDIM loop (3 decoder steps, the
re-encoding between them) as one graph, plus a separate training graph; on an H100 that warm-up did not
finish within 230 s. The same work is made of a few pieces with fixed shapes: the backbone, the clean
task features (once per call), one decoder step (`decode`: the same graph on every step but the last,
which upsamples) and the aux heads. Compiling those in place gives the same kernels to inference and
training and traces each piece once. Numbers are unchanged (tests/models/test_compile.py); parameter
names are unchanged (nn.Module.compile works in place), so checkpoints and DDP see the plain model.
"""
from __future__ import annotations

import torch
from torch import nn

# head methods compiled when present (TaskDiffusion and MLoRE heads); a head without them (the
# baseline's single pass) is compiled as a module
HEAD_REGIONS = ("clean_task_features", "decode", "aux_forward")


def compile_regions(model: nn.Module, **compile_kwargs) -> nn.Module:
    """Compile `model.backbone` and the head's repeated pieces in place; returns the same model.

    compile_kwargs go to torch.compile (e.g. backend="eager" for a quick trace check, mode=...).
    """
    backbone, head = getattr(model, "backbone", None), getattr(model, "heads", None)
    if backbone is None or head is None:
        raise TypeError(f"compile_regions needs a model with .backbone and .heads, got {type(model).__name__}")
    backbone.compile(**compile_kwargs)
    methods = [name for name in HEAD_REGIONS if callable(getattr(head, name, None))]
    if not methods:
        head.compile(**compile_kwargs)
    for name in methods:  # an instance attribute shadows the class method: the compiled bound method
        setattr(head, name, torch.compile(getattr(head, name), **compile_kwargs))
    return model
