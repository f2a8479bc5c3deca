"""The interface the trainer calls for multi-task balancing, and `fixed`, the paper's weighted sum.

One optimizer step of the trainer (engine/trainer.py) runs, with accum micro-batches per rank:

    balancer.begin_step(k)                          # k = completed iterations before this step
    for each micro-batch:                           # under DDP no_sync when balancer.owns_reduction
        loss, terms = balancer(outputs, targets)    # scalar loss (checked for NaN/Inf), logged terms
        balancer.backward(loss, accum)              # gradients of loss / accum
    logs = balancer.finish(model)                   # before clipping: reduce own grads, aggregate, logs
    optimizer.step()
    balancer.end_step(k + 1)                        # state updates that need the finished step

A skipped step (non-finite loss with nonfinite_loss: skip) never reaches end_step, and begin_step of the
next step discards what was pending. The state a method needs for exact resume lives in its state_dict
(buffers, parameters, `get_extra_state`), which the checkpoint stores under 'loss_balancing'.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from losses.balancing.registry import register_balancer
from utils.distributed import all_reduce_sum, get_world_size

__all__ = ["Balancer", "FixedWeights", "LossScaling"]


class Balancer(nn.Module):
    """Base class: the fixed weighted sum of the criterion (losses/criterion.py), bit for bit.

    criterion: the MultiTaskCriterion. Subclasses override `combine` (loss-scaling methods) or the
    step hooks (gradient methods). owns_reduction: the method reduces gradients over ranks itself (the
    trainer then runs every micro-batch under DDP's no_sync).
    """

    name = "fixed"
    owns_reduction = False

    def __init__(self, criterion, settings: dict | None = None, seed: int = 0):
        super().__init__()
        self.criterion = [criterion]  # a list: not a submodule, so its (absent) state is not ours
        # fixed only calls the criterion, which may be any callable (outputs, targets) -> (loss, terms); the
        # other methods need a MultiTaskCriterion's task list and per-task objectives
        self.tasks = list(getattr(criterion, "tasks", None) or [])
        if type(self).__name__ != "Balancer" and not (self.tasks and hasattr(criterion, "objectives")):
            raise TypeError(f"loss_balancing {self.name}: the criterion {type(criterion).__name__} has no task list "
                            f"and objectives(); balancing methods other than fixed need losses.MultiTaskCriterion")
        self.settings = dict(settings or {})
        self.seed = int(seed)

    # ---- optimizer and model wiring --------------------------------------------------------
    def optimizer_params(self) -> list:
        """Parameters the main optimizer trains (uncertainty's log-variances); none by default."""
        return []

    def add_to_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Add optimizer_params as their own group (no weight decay); call before the scheduler is built."""
        params = self.optimizer_params()
        if params:
            optimizer.add_param_group({"params": params, "weight_decay": 0.0, "name": "loss_balancing"})

    def attach(self, model: nn.Module) -> None:
        """Hook into the (bare) model when the method needs its internals (gradient methods)."""

    # ---- one step ------------------------------------------------------------------------------
    def begin_step(self, iteration: int) -> None:
        """Before the first micro-batch of the step after `iteration` completed ones."""

    def forward(self, outputs, targets):
        return self.criterion[0](outputs, targets)

    def backward(self, loss: torch.Tensor, accum: int) -> None:
        (loss / accum).backward()

    def finish(self, model: nn.Module) -> dict:
        """After every micro-batch's backward, before clipping; returns {tag: float} for the logs."""
        return {}

    def end_step(self, iteration: int) -> None:
        """After the optimizer step that completed `iteration`."""

    def has_state(self) -> bool:
        return bool(self.state_dict())


FixedWeights = Balancer
register_balancer("fixed", FixedWeights, doc="the config's loss_weights (the paper)")


class LossScaling(Balancer):
    """A method that combines the per-task objectives ℓ_t into one scalar (uncertainty, dwa, log, rlw, famo).

    ℓ_t = λ_t·(L_t + aux_weight·L_aux_t) with the config's loss_weights λ (task_weights: true, the default),
    or L_t + aux_weight·L_aux_t; MLoRE's balancing term is added to the combined loss unchanged. The
    step's per-task mean of ℓ over micro-batches and ranks (`step_losses`, identical on every rank) is
    what the stateful methods (dwa, famo) update from, in end_step.
    """

    needs_step_losses = False

    def __init__(self, criterion, settings: dict | None = None, seed: int = 0):
        super().__init__(criterion, settings, seed)
        self.task_weights = bool(self.settings.get("task_weights", True))
        self._sums = None
        self._count = 0
        self.step_losses = None

    def begin_step(self, iteration: int) -> None:
        self._sums, self._count, self.step_losses = None, 0, None

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        """The per-task weights this method applies (logged as balance/weight/<task>)."""
        raise NotImplementedError

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        """losses: (T,) float32 objectives with graph -> the scalar to minimise. Default Σ w_t·ℓ_t."""
        return (self.weights(losses.detach()) * losses).sum()

    def forward(self, outputs, targets):
        per, extra, terms = self.criterion[0].objectives(outputs, targets, task_weights=self.task_weights)
        losses = torch.stack([per[t] for t in self.tasks])
        total = self.combine(losses)
        if extra is not None:
            total = total + extra
        d = losses.detach().double()
        self._sums = d if self._sums is None else self._sums + d
        self._count += 1
        terms["loss/total"] = total.detach()
        return total, terms

    def finish(self, model: nn.Module) -> dict:
        for p in self.optimizer_params():  # not inside DDP: average their gradients over the ranks here
            if p.grad is not None and get_world_size() > 1:
                all_reduce_sum(p.grad).div_(get_world_size())
        if self.needs_step_losses and self._sums is not None:
            pack = torch.cat([self._sums, torch.tensor([float(self._count)], dtype=torch.float64,
                                                       device=self._sums.device)])
            all_reduce_sum(pack)
            self.step_losses = (pack[:-1] / pack[-1]).float()
        return self.logs()

    def logs(self) -> dict:
        if self._sums is None:
            return {}
        w = self.weights((self._sums / max(self._count, 1)).float())
        return OrderedDict((f"balance/weight/{t}", float(v)) for t, v in zip(self.tasks, w.tolist()))
