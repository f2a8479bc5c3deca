"""The multi-task criterion: weighted per-task losses, auxiliary supervision and MLoRE load balancing.

total = L_main + aux_weight · L_aux, with
    L_main = Σ_t λ_t · L_t(pred_t, gt_t)  (+ load_balancing · L_cv when the outputs carry 'route')
    L_aux  = Σ_t λ_t · L_t(aux_t, gt_t)   (the same losses and weights on the auxiliary heads)
(docs/method.md#load-balancing-loss, docs/method.md#losses). Every term is also returned, detached, for logging.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Mapping

import torch
from torch import nn

import inspect

from data import tasks as task_table
from data.datasets import dataset_spec
from data.tasks import resolve
from losses.load_balancing import load_balancing_loss
from utils.config import cfg_get

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
                 load_balancing: float | None = None, options: Mapping | None = None):
        """tasks: Task objects (data/tasks.py) in canonical order. options: the config values the tasks'
        losses name in their `loss_config` (e.g. edge_w, ignore_invalid_area_depth), plus ignore_index."""
        super().__init__()
        self.task_objects = {t.name: t for t in tasks}
        self.tasks = list(self.task_objects)
        missing = [t for t in self.tasks if t not in loss_weights]
        if missing:
            raise ValueError(f"loss_kwargs.loss_weights has no weight for task(s) {missing}; add them to the config")
        self.weights = {t: float(loss_weights[t]) for t in self.tasks}
        lb = loss_weights.get("load_balancing", 0.0003) if load_balancing is None else load_balancing
        self.load_balancing = float(lb)
        self.aux_weight = float(aux_weight)
        self.losses = {t: _bind_loss(task, dict(options or {})) for t, task in self.task_objects.items()}

    def task_loss(self, task: str, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Unweighted float32 loss of one task."""
        if pred.shape[-2:] != gt.shape[-2:]:
            raise ValueError(f"{task}: prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in "
                             f"spatial size; the model must return outputs at the input size")
        return self.losses[task](pred, gt)

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

    def objectives(self, outputs: Mapping, targets: Mapping, task_weights: bool = True):
        """Per-task objectives for the balancing methods (losses/balancing): (per, extra, terms).

        per: {task: λ_t·(L_t + aux_weight·L_aux_t)} (task_weights False: without λ_t), float32 with graph;
        extra: load_balancing·L_cv when the outputs carry 'route', else None; terms: as `forward`'s, with
        loss/main and loss/aux the fixed weighted sums (comparable across methods) and loss/total their
        fixed total (the balancing method overwrites it with its own objective).
        """
        pred = outputs["pred"]
        device_type = next(iter(pred.values())).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            terms: dict = OrderedDict()
            raw = self._per_task(pred, targets, "loss", terms)
            aux = self._per_task(outputs["aux"], targets, "aux", terms) if outputs.get("aux") else None
            per = OrderedDict()
            for t in self.tasks:
                ell = raw[t] if aux is None else raw[t] + self.aux_weight * aux[t]
                per[t] = self.weights[t] * ell if task_weights else ell
            main = sum(self.weights[t] * raw[t] for t in self.tasks)
            extra = None
            if outputs.get("route"):
                cv = load_balancing_loss(outputs["route"])
                terms["loss/cv"] = cv.detach()
                extra = self.load_balancing * cv
                main = main + extra
            terms["loss/main"] = main.detach()
            total = main
            if aux is not None:
                aux_sum = sum(self.weights[t] * aux[t] for t in self.tasks)
                terms["loss/aux"] = aux_sum.detach()
                total = main + self.aux_weight * aux_sum
            terms["loss/total"] = total.detach()
        return per, extra, terms

    def _per_task(self, preds: Mapping[str, torch.Tensor], targets, prefix: str, terms: dict) -> dict:
        out = OrderedDict()
        for t in self.tasks:
            if t not in preds:
                raise KeyError(f"model outputs have no '{t}' prediction under '{prefix}'; it has {sorted(preds)}")
            if t not in targets:
                raise KeyError(f"targets have no ground truth for task '{t}'; they have {sorted(targets)}")
            out[t] = self.task_loss(t, preds[t], targets[t])
            terms[f"{prefix}/{t}"] = out[t].detach()
        return out

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


def _bind_loss(task, options: dict):
    """task.loss with its keyword arguments fixed: ignore_index (the task's ignore value) when the function
    takes one, and each (kwarg, config key) of task.loss_config from `options`."""
    fn = resolve(task.loss)
    kwargs = {}
    params = inspect.signature(fn).parameters
    if "ignore_index" in params:
        kwargs["ignore_index"] = int(task.ignore_value)
    for kwarg, key in task.loss_config:
        if options.get(key) is None:
            raise ValueError(f"the {task.name} loss needs the config value {key!r}; set it in the config")
        kwargs[kwarg] = options[key]
    return partial(fn, **kwargs)


def build_criterion(cfg) -> MultiTaskCriterion:
    """The criterion for cfg.TASKS.NAMES with the config's weights (docs/method.md, losses)."""
    db = cfg.db_name if "db_name" in cfg else cfg["train_db_name"]
    tasks = task_table.task_infos(db, cfg["TASKS"]["NAMES"]).values()
    with_aux = bool(cfg_get(cfg, "with_aux", True))
    edge_w = cfg_get(cfg, "edge_w")
    if edge_w is None:
        edge_w = cfg_get(cfg_get(cfg, "task_dictionary", {}) or {}, "edge_w", dataset_spec(db).edge_w)
    options = {k: cfg_get(cfg, k) for k in ("ignore_invalid_area_depth", "ignore_index")}
    options["edge_w"] = edge_w
    for task in tasks:  # plug-in tasks may name further config keys
        for _, key in task.loss_config:
            options.setdefault(key, cfg_get(cfg, key))
    return MultiTaskCriterion(
        tasks,
        loss_weights=cfg["loss_kwargs"]["loss_weights"],
        aux_weight=float(cfg_get(cfg, "aux_weight", 0.0)) if with_aux else 0.0,
        options=options,
    )
