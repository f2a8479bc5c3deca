"""Evaluation (docs/method.md#evaluation): per-family metric accumulators, the multi-task evaluator, Δm, boundary odsF.

Each accumulator has update / merge / synchronize (all-reduce of its sums) / compute, and pools over the
whole split as docs/method.md#metrics, so sharded evaluation over N ranks equals single-process evaluation.

Names are resolved lazily (PEP 562): the boundary worker processes import `evaluation.boundary`, which
needs only numpy/scipy/scikit-image, and must not pay for importing torch through this package.
"""
from importlib import import_module

_EXPORTS = {
    "BoundaryMeter": "evaluation.boundary",
    "edge_thresholds": "evaluation.boundary",
    "evaluate_image": "evaluation.boundary",
    "pr_summary": "evaluation.boundary",
    "delta_m": "evaluation.delta",
    "DepthMeter": "evaluation.depth",
    "EdgeProxyMeter": "evaluation.edge_proxy",
    "EdgeMeter": "evaluation.edge_proxy",
    "EvalContext": "evaluation.base",
    "MultiTaskEvaluator": "evaluation.multitask",
    "build_evaluator": "evaluation.multitask",
    "NormalsMeter": "evaluation.normals",
    "SaliencyMeter": "evaluation.saliency",
    "SegmentationMeter": "evaluation.segmentation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'evaluation' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
