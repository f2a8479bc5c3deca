"""Loss-scaling balancing methods (docs/method.md#multi-task-balancing): each turns the per-task objectives
ℓ = (ℓ_1..ℓ_T) of a micro-batch into one scalar; the gradient is then an ordinary backward.

    uncertainty  Σ_t exp(−s_t)·ℓ_t + s_t, s_t = log σ_t² learned by the main optimizer (Kendall et al. 2018)
    dwa          Σ_t w_t·ℓ_t, w = T·softmax(r / temperature), r_t = ℓ̄_t(n−1) / ℓ̄_t(n−2) over the last two
                 windows of `window` iterations (uniform until two windows are done; Liu et al. 2019)
    log          Σ_t log ℓ_t (geometric balancing, the sum of log-losses of MTMamba)
    rlw          Σ_t w_t·ℓ_t, w = T·softmax(ε), ε ~ N(0, I) drawn per iteration (Lin et al. 2022)
    famo         c·Σ_t z_t·log(ℓ_t + ε), z = softmax(ξ), c = 1/Σ_t z_t/(ℓ_t + ε) (no gradient); after
                 each step ξ takes an Adam step on (diag z − z zᵀ)·δ, δ_t = log ℓ_t(k−1) − log ℓ_t(k)
                 (Liu et al. 2023)

Weights are T-scaled (sum T) so that the gradient scale matches the fixed sum at equal weights.
Exactness under gradient accumulation and DDP: uncertainty, dwa and rlw apply weights that are fixed
during the step (identical on every rank: dwa's windows and famo's update use the step's losses averaged
over micro-batches and ranks, rlw's draw is seeded by (seed, iteration) only), so the step equals one
over the global batch. log and famo weight each task by 1/ℓ_t of the batch it sees (log) or of the current
micro-batch (famo's normaliser c and its per-task 1/ℓ): with accumulation or several ranks each micro-batch
uses its own ℓ, which is not the global batch's; an exact version would keep one gradient buffer per task.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from losses.balancing.base import LossScaling
from losses.balancing.registry import register_balancer
from utils.config_schema import Spec
from utils.seed import mix_seed

__all__ = ["Uncertainty", "DWA", "LogBalancing", "RandomWeights", "FAMO", "RLW_STREAM"]

RLW_STREAM = 11  # seed stream of the random loss weights (apart from utils.seed's streams)

TASK_WEIGHTS = Spec("bool", True, "every method but fixed: multiply each task's loss by its "
                                  "loss_kwargs.loss_weights entry before balancing (false: unweighted losses)")


class Uncertainty(LossScaling):
    """Homoscedastic uncertainty weighting; s = log σ² starts at 0 (weights 1) and is in the optimizer."""

    name = "uncertainty"

    def __init__(self, criterion, settings=None, seed=0):
        super().__init__(criterion, settings, seed)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def optimizer_params(self) -> list:
        return [self.log_vars]

    def weights(self, losses):
        return torch.exp(-self.log_vars.detach()).to(losses.dtype)

    def combine(self, losses):
        s = self.log_vars.to(losses.dtype)
        return (torch.exp(-s) * losses + s).sum()


class DWA(LossScaling):
    """Dynamic weight average over windows of iterations (this trainer counts iterations, not epochs)."""

    name = "dwa"
    needs_step_losses = True

    def __init__(self, criterion, settings=None, seed=0):
        super().__init__(criterion, settings, seed)
        self.temperature = float(self.settings.get("temperature", 2.0))
        self.window = int(self.settings.get("window", 100))
        t = len(self.tasks)
        self.register_buffer("window_sum", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("window_count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("history", torch.zeros(2, t, dtype=torch.float64))  # [older, newer] window means
        self.register_buffer("windows_done", torch.zeros((), dtype=torch.int64))

    def weights(self, losses):
        t = len(self.tasks)
        if int(self.windows_done) < 2:
            return torch.ones(t, dtype=losses.dtype, device=losses.device)
        rates = (self.history[1] / self.history[0].clamp_min(1e-12)).to(losses.dtype)
        return t * torch.softmax(rates / self.temperature, dim=0).to(losses.device)

    def end_step(self, iteration: int) -> None:
        if self.step_losses is None:
            return
        self.window_sum += self.step_losses.double()
        self.window_count += 1
        if int(iteration) % self.window == 0:
            mean = self.window_sum / self.window_count.clamp_min(1)
            self.history.copy_(torch.stack([self.history[1], mean]))
            self.windows_done.add_(1).clamp_(max=2)
            self.window_sum.zero_()
            self.window_count.zero_()


class LogBalancing(LossScaling):
    """Σ log ℓ_t: every task's gradient is divided by its own loss (scale-free)."""

    name = "log"

    def __init__(self, criterion, settings=None, seed=0):
        super().__init__(criterion, settings, seed)
        self.eps = float(self.settings.get("loss_eps", 1e-8))

    def weights(self, losses):
        return 1.0 / (losses + self.eps)

    def combine(self, losses):
        return torch.log(losses + self.eps).sum()


class RandomWeights(LossScaling):
    """Random loss weighting: one draw per iteration from a generator seeded by (seed, iteration), so the
    weights are the same on every rank and micro-batch and after a resume, whatever the batch size."""

    name = "rlw"

    def __init__(self, criterion, settings=None, seed=0):
        super().__init__(criterion, settings, seed)
        self._w = None

    def begin_step(self, iteration: int) -> None:
        super().begin_step(iteration)
        g = torch.Generator().manual_seed(mix_seed(self.seed, RLW_STREAM, int(iteration)))
        self._w = len(self.tasks) * torch.softmax(torch.randn(len(self.tasks), generator=g), dim=0)

    def weights(self, losses):
        return self._w.to(device=losses.device, dtype=losses.dtype)


class FAMO(LossScaling):
    """Fast adaptive multitask optimisation; the logits' update uses the next step's losses (another batch)
    instead of a second forward of the same batch, as LibMTL does, so it costs no extra forward."""

    name = "famo"
    needs_step_losses = True

    def __init__(self, criterion, settings=None, seed=0):
        super().__init__(criterion, settings, seed)
        t = len(self.tasks)
        self.eps = float(self.settings.get("loss_eps", 1e-8))
        self.logits = nn.Parameter(torch.zeros(t))
        self.logits.requires_grad_(False)  # updated by its own Adam step, never by the main backward
        self._adam = torch.optim.Adam([self.logits], lr=float(self.settings.get("famo_lr", 0.025)),
                                      weight_decay=float(self.settings.get("famo_weight_decay", 1e-3)))
        self.register_buffer("previous", torch.zeros(t))
        self.register_buffer("has_previous", torch.zeros((), dtype=torch.bool))

    def weights(self, losses):
        return torch.softmax(self.logits.detach(), dim=0).to(losses.dtype)

    def combine(self, losses):
        z = self.weights(losses)
        shifted = losses + self.eps
        c = 1.0 / (z / shifted.detach()).sum()
        return c * (z * torch.log(shifted)).sum()

    @torch.no_grad()
    def end_step(self, iteration: int) -> None:
        if self.step_losses is None:
            return
        cur = self.step_losses.to(self.previous.device)
        if bool(self.has_previous):
            delta = torch.log(self.previous + self.eps) - torch.log(cur + self.eps)
            z = torch.softmax(self.logits, dim=0)
            self.logits.grad = z * delta - z * (z * delta).sum()  # (diag z − z zᵀ) δ: softmax's Jacobianᵀ δ
            self._adam.step()
            self.logits.grad = None
        self.previous.copy_(cur)
        self.has_previous.fill_(True)

    def get_extra_state(self):
        return {"adam": self._adam.state_dict()}

    def set_extra_state(self, state):
        if state and state.get("adam") is not None:
            self._adam.load_state_dict(state["adam"])


def _opts(**specs) -> dict:
    return OrderedDict(task_weights=TASK_WEIGHTS, **specs)


EPS = Spec("float", 1e-8, "log, famo: added to each loss inside the logarithm", gt=0)
register_balancer("uncertainty", Uncertainty, _opts(), doc="Kendall et al. 2018")
register_balancer("dwa", DWA, _opts(
    temperature=Spec("float", 2.0, "dwa: softmax temperature of the loss-descent rates", gt=0),
    window=Spec("int", 100, "dwa: iterations per window (the paper's epoch)", ge=1)), doc="Liu et al. 2019")
register_balancer("log", LogBalancing, _opts(loss_eps=EPS), doc="geometric balancing (MTMamba)")
register_balancer("rlw", RandomWeights, _opts(), doc="Lin et al. 2022")
register_balancer("famo", FAMO, _opts(
    loss_eps=EPS,
    famo_lr=Spec("float", 0.025, "famo: learning rate of the task logits' Adam", gt=0),
    famo_weight_decay=Spec("float", 1e-3, "famo: weight decay of the task logits' Adam", ge=0)), doc="Liu et al. 2023")
