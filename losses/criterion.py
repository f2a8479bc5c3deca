"""The multi-task criterion: weighted per-task losses, auxiliary supervision and MLoRE load balancing.

total = L_main + aux_weight · L_aux, with
    L_main = Σ_t λ_t · L_t(pred_t, gt_t)  (+ load_balancing · L_cv when the outputs carry 'route')
    L_aux  = Σ_t λ_t · L_t(aux_t, gt_t)   (the same losses and weights on the auxiliary heads)
(spec §5.7 and §6). Every term is also returned, detached, for logging.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

from data import tasks as task_table
from losses.load_balancing import load_balancing_loss
from losses.task_losses import LOSS_FUNCTIONS, LOSS_TYPE_OF_TASK

__all__ = ["MultiTaskCriterion", "build_criterion"]


class MultiTaskCriterion(nn.Module):
    """criterion(outputs, targets) -> (total, terms).

    outputs: the model's dict: 'pred' {task: B×K×H×W}, optionally 'aux' {task: B×K×H×W} and 'route'.
    targets: {task: B×C×H×W} ground truths (a data batch works: extra keys are ignored).
    terms: OrderedDict of detached float32 scalars `loss/<task>`, `aux/<task>` (when 'aux' is present),
    `loss/cv` (when 'route' is present, unweighted), `loss/main`, `loss/aux` (when 'aux' is present),
    `loss/total`.
    """

    def __init__(self, tasks, loss_weights: Mapping[str, float], aux_weight: float = 0.0,
                 edge_w: float | None = None, ignore_invalid_area_depth: bool = True,
                 ignore_index: int = 255, load_balancing: float | None = None):
        super().__init__()
        self.tasks = list(tasks)
        missing = [t for t in self.tasks if t not in loss_weights]
        if missing:
            raise ValueError(f"loss_kwargs.loss_weights has no weight for task(s) {missing}; add them to the config")
        unknown = [t for t in self.tasks if t not in LOSS_TYPE_OF_TASK]
        if unknown:
            raise ValueError(f"no loss is defined for task(s) {unknown}; known: {sorted(LOSS_TYPE_OF_TASK)}")
        if "edge" in self.tasks and edge_w is None:
            raise ValueError("the edge loss needs edge_w (task_dictionary.edge_w in the config)")
        self.weights = {t: float(loss_weights[t]) for t in self.tasks}
        lb = loss_weights.get("load_balancing", 0.0003) if load_balancing is None else load_balancing
        self.load_balancing = float(lb)
        self.aux_weight = float(aux_weight)
        self.edge_w = edge_w
        self.ignore_invalid_area_depth = bool(ignore_invalid_area_depth)
        self.ignore_index = int(ignore_index)

    def task_loss(self, task: str, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Unweighted float32 loss of one task."""
        if pred.shape[-2:] != gt.shape[-2:]:
            raise ValueError(f"{task}: prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in "
                             f"spatial size; the model must return outputs at the input size")
        kind = LOSS_TYPE_OF_TASK[task]
        fn = LOSS_FUNCTIONS[kind]
        if kind == "balanced_bce":
            return fn(pred, gt, edge_w=self.edge_w, ignore_index=self.ignore_index)
        if kind == "masked_l1":
            return fn(pred, gt, ignore_invalid=self.ignore_invalid_area_depth)
        return fn(pred, gt, ignore_index=self.ignore_index)

    def _weighted(self, preds: Mapping[str, torch.Tensor], targets, prefix: str, terms: dict) -> torch.Tensor:
        total = None
        for t in self.tasks:
            if t not in preds:
                raise KeyError(f"model outputs have no '{t}' prediction under '{prefix}'; it has {sorted(preds)}")
            if t not in targets:
                raise KeyError(f"targets have no ground truth for task '{t}'; they have {sorted(targets)}")
            loss = self.task_loss(t, preds[t], targets[t])
            terms[f"{prefix}/{t}"] = loss.detach()
            total = self.weights[t] * loss if total is None else total + self.weights[t] * loss
        return total

    def forward(self, outputs: Mapping, targets: Mapping):
        pred = outputs["pred"]
        device_type = next(iter(pred.values())).device.type
        # Losses in float32 whatever autocast the caller runs under (inputs are cast with .float() too).
        with torch.autocast(device_type=device_type, enabled=False):
            terms: dict = OrderedDict()
            main = self._weighted(pred, targets, "loss", terms)
            aux_terms: dict = OrderedDict()
            aux = self._weighted(outputs["aux"], targets, "aux", aux_terms) if outputs.get("aux") else None
            terms.update(aux_terms)
            if outputs.get("route"):
                cv = load_balancing_loss(outputs["route"])
                terms["loss/cv"] = cv.detach()
                main = main + self.load_balancing * cv
            terms["loss/main"] = main.detach()
            total = main
            if aux is not None:
                terms["loss/aux"] = aux.detach()
                total = main + self.aux_weight * aux
            terms["loss/total"] = total.detach()
        return total, terms


def _get(cfg, key, default=None):
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def build_criterion(cfg) -> MultiTaskCriterion:
    """The criterion for cfg.TASKS.NAMES with the config's weights (spec §6)."""
    db = cfg.db_name if "db_name" in cfg else cfg["train_db_name"]
    names = task_table.ordered_tasks(db, cfg["TASKS"]["NAMES"])
    with_aux = bool(_get(cfg, "with_aux", True))
    edge_w = _get(cfg, "edge_w")
    if edge_w is None and "edge" in names:
        edge_w = _get(_get(cfg, "task_dictionary", {}) or {}, "edge_w", task_table.DEFAULT_EDGE_W[db])
    return MultiTaskCriterion(
        names,
        loss_weights=cfg["loss_kwargs"]["loss_weights"],
        aux_weight=float(_get(cfg, "aux_weight", 0.0)) if with_aux else 0.0,
        edge_w=edge_w,
        ignore_invalid_area_depth=bool(_get(cfg, "ignore_invalid_area_depth", True)),
        ignore_index=int(_get(cfg, "ignore_index", 255)),
    )
