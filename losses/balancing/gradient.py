"""Gradient balancing methods through torchjd (docs/method.md#multi-task-balancing): the per-task gradients
of the shared backbone are combined by an aggregator instead of summed.

Each micro-batch calls `torchjd.autojac.mtl_backward` on the per-task objectives ℓ_t / accum with the
backbone's output as the shared representation: the decoder and heads (which every task's loss reaches
after the features) get the sum of the task gradients in `.grad`, as in the fixed sum; the backbone's
parameters get the Jacobian (one row per task) in `.jac`, accumulated over micro-batches. In `finish`,
under DDP, the Jacobians and the decoder gradients are averaged over the ranks first (the trainer runs
these methods under no_sync), so every rank aggregates the Jacobian of the global batch and a 2-process
run equals a 1-process run of the same global batch; then `jac_to_grad` aggregates into `.grad`, and the
usual clipping and optimizer step follow. Cost: one backward per task through the backbone (vectorised by
torch.vmap unless chunk_size says otherwise) and a T×T Gramian.

Logged: the aggregator's per-task weights (weighted aggregators) and the pairwise cosine similarities of
the task gradients on the backbone, balance/cos/<a>-<b>, from the Gramian G = J Jᵀ.
MLoRE's expert-balancing term is not a task: its weight/T is added to every task's objective (their sum is
the fixed recipe's term).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from losses.balancing.base import Balancer
from losses.balancing.registry import register_balancer
from losses.balancing.scaling import TASK_WEIGHTS
from utils.checkpoint import unwrap_model
from utils.config_schema import Spec
from utils.distributed import all_reduce_sum, get_world_size

__all__ = ["GradientBalancer", "AGGREGATORS"]

INSTALL = "pip install torchjd==0.18.0 (requirements.txt pins it)"
INSTALL_CVX = "pip install cvxpy==1.9.3 ecos==2.0.14 (the solver these torchjd aggregators use)"
INSTALL_QP = "pip install qpsolvers==4.13.0 quadprog==0.1.14 (the dual-cone projector of these torchjd aggregators)"


def _upgrad(n, s):
    from torchjd.aggregation import UPGrad
    return UPGrad(pref_vector=torch.ones(n))  # ones: without conflict the step is the fixed recipe's sum


def _mgda(n, s):
    from torchjd.aggregation import MGDA
    return MGDA()


def _pcgrad(n, s):
    from torchjd.aggregation import PCGrad
    return PCGrad()


def _cagrad(n, s):
    from torchjd.aggregation import CAGrad
    return CAGrad(c=float(s.get("cagrad_c", 0.5)))


def _nash_mtl(n, s):
    from torchjd.aggregation import NashMTL
    return NashMTL(n_tasks=n, max_norm=float(s.get("nash_max_norm", 1.0)),
                   update_weights_every=int(s.get("nash_update_every", 1)),
                   optim_niter=int(s.get("nash_optim_niter", 20)))


def _imtl_g(n, s):
    from torchjd.aggregation import IMTLG
    return IMTLG()


def _dualproj(n, s):
    from torchjd.aggregation import DualProj
    return DualProj(pref_vector=torch.ones(n))


def _aligned_mtl(n, s):
    from torchjd.aggregation import AlignedMTL
    return AlignedMTL()


CHUNK = Spec("int", None, "gradient methods: torchjd parallel_chunk_size (per-task backwards run at once; "
                          "null: all, 1: one after the other, less memory; forced to 1 with compile: true)",
             ge=1, nullable=True)
# name -> (builder, options, extra modules, paper)
AGGREGATORS = OrderedDict([
    ("upgrad", (_upgrad, {}, ("qpsolvers", "quadprog"), "Quinton & Rey 2024")),
    ("mgda", (_mgda, {}, (), "Sener & Koltun 2018")),
    ("pcgrad", (_pcgrad, {}, (), "Yu et al. 2020")),
    ("cagrad", (_cagrad, {"cagrad_c": Spec("float", 0.5, "cagrad: radius c of the conflict-averse ball", ge=0)},
                ("cvxpy",), "Liu et al. 2021")),
    ("nash_mtl", (_nash_mtl, {
        "nash_max_norm": Spec("float", 1.0, "nash_mtl: norm bound of the combined gradient (0: none)", ge=0),
        "nash_update_every": Spec("int", 1, "nash_mtl: solve for new weights every this many steps", ge=1),
        "nash_optim_niter": Spec("int", 20, "nash_mtl: solver iterations", ge=1)}, ("cvxpy", "ecos"), "Navon et al. 2022")),
    ("imtl_g", (_imtl_g, {}, (), "Liu et al. 2021")),
    ("dualproj", (_dualproj, {}, ("qpsolvers", "quadprog"), "Quinton & Rey 2024")),
    ("aligned_mtl", (_aligned_mtl, {}, (), "Senushkin et al. 2023")),
])


class GradientBalancer(Balancer):
    """mtl_backward on the backbone output + a torchjd aggregator (see the module doc)."""

    owns_reduction = True

    def __init__(self, criterion, settings=None, seed=0, aggregator: str = "upgrad"):
        super().__init__(criterion, settings, seed)
        self.name = aggregator
        self.task_weights = bool(self.settings.get("task_weights", True))
        self.chunk_size = self.settings.get("chunk_size")
        self.aggregator = AGGREGATORS[aggregator][0](len(self.tasks), self.settings)
        self._features: list = []
        self._pending = None
        self._shared: list = []
        self._model = None
        self._hook = None
        self._weights_sum = None
        self._gram = None

    def attach(self, model: nn.Module) -> None:
        bare = unwrap_model(model)
        backbone = getattr(bare, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"loss_balancing {self.name}: the model ({type(bare).__name__}) has no `backbone` "
                             f"module whose output is the shared representation; use a loss-scaling method")
        self._model = [bare]
        self._shared = [p for p in backbone.parameters() if p.requires_grad]
        if self._hook is not None:
            self._hook.remove()
        self._hook = backbone.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output) -> None:
        if torch.is_grad_enabled() and module.training:
            self._features = [t for t in (output if isinstance(output, (list, tuple)) else [output])
                              if torch.is_tensor(t) and t.requires_grad]

    def begin_step(self, iteration: int) -> None:
        for p in self._shared:  # a skipped step may have left Jacobians behind
            if hasattr(p, "jac"):
                del p.jac
        self._pending, self._features, self._weights_sum = None, [], None

    def forward(self, outputs, targets):
        per, extra, terms = self.criterion[0].objectives(outputs, targets, task_weights=self.task_weights)
        losses = [per[t] for t in self.tasks]
        if extra is not None:
            losses = [ell + extra / len(losses) for ell in losses]
        total = torch.stack(losses).sum()
        terms["loss/total"] = total.detach()
        self._pending = losses
        return total, terms

    def backward(self, loss: torch.Tensor, accum: int) -> None:
        from torchjd.autojac import mtl_backward

        if not self._features:
            raise RuntimeError(f"loss_balancing {self.name}: the backbone's output was not captured in this "
                               f"forward (the hook sees only training forwards with gradients)")
        tensors = [ell / accum for ell in self._pending]
        # retain_graph: the tasks' losses share the joint decoder's graph after the features, so the first
        # task's backward must not free it (it is released with the step's tensors)
        mtl_backward(tensors, features=self._features, shared_params=self._shared, retain_graph=True,
                     parallel_chunk_size=self.chunk_size)
        self._pending, self._features = None, []

    def finish(self, model: nn.Module) -> dict:
        from torchjd.autojac import jac_to_grad

        shared = [p for p in self._shared if hasattr(p, "jac")]
        if not shared:
            return {}
        if get_world_size() > 1:
            self._reduce(shared)
        flat = [p.jac.reshape(p.jac.shape[0], -1) for p in shared]
        gram = sum(j.double() @ j.double().T for j in flat)
        weights = jac_to_grad(shared, self.aggregator)
        return self._logs(gram, weights)

    def _reduce(self, shared: list) -> None:
        """Average the backbone Jacobians and every other gradient over the ranks (one buffer each)."""
        world = get_world_size()
        others = [p for p in self._model[0].parameters() if p.requires_grad and not hasattr(p, "jac")]
        present = torch.tensor([p.grad is not None for p in others], dtype=torch.float64)
        all_reduce_sum(present)  # a parameter without gradient on some rank still joins the reduction
        grads = [p for p, n in zip(others, present.tolist()) if n > 0]
        for p in grads:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for group in ([p.jac for p in shared], [p.grad for p in grads]):
            if not group:
                continue
            buf = torch.cat([t.reshape(-1) for t in group])
            all_reduce_sum(buf).div_(world)
            offset = 0
            for t in group:
                t.copy_(buf[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def _logs(self, gram: torch.Tensor, weights) -> dict:
        out = OrderedDict()
        if torch.is_tensor(weights):
            for t, v in zip(self.tasks, weights.detach().flatten().tolist()):
                out[f"balance/weight/{t}"] = float(v)
        d = gram.diagonal().clamp_min(1e-30).sqrt()
        cos = gram / (d[:, None] * d[None, :])
        for i, a in enumerate(self.tasks):
            for j in range(i + 1, len(self.tasks)):
                out[f"balance/cos/{a}-{self.tasks[j]}"] = float(cos[i, j])
        return out

    # ---- state for exact resume: NashMTL keeps its last weights and a step counter --------------------
    def get_extra_state(self):
        w = getattr(self.aggregator, "weighting", None)
        if w is not None and hasattr(w, "prvs_alpha") and hasattr(w, "step"):
            return {"nash_step": float(w.step), "nash_alpha": torch.as_tensor(w.prvs_alpha).clone(),
                    "nash_norm": torch.as_tensor(w.normalization_factor).clone()}
        return {}

    def set_extra_state(self, state):
        w = getattr(self.aggregator, "weighting", None)
        if not state or w is None or "nash_step" not in state:
            return
        w.prvs_alpha = state["nash_alpha"].cpu().numpy()
        w.normalization_factor = state["nash_norm"].cpu().numpy()
        w.step = float(state["nash_step"])
        if w.step > 0:
            w._init_optim_problem()  # torchjd 0.18 builds the cvxpy problem at its first step only


def _factory(name: str):
    def make(criterion, settings, seed):
        return GradientBalancer(criterion, settings, seed, aggregator=name)
    make.__name__ = f"make_{name}"
    return make


for _name, (_build, _options, _extra, _paper) in AGGREGATORS.items():
    register_balancer(_name, _factory(_name), OrderedDict(task_weights=TASK_WEIGHTS, chunk_size=CHUNK, **_options),
                      requires=("torchjd",) + _extra, install=(INSTALL_CVX if "cvxpy" in _extra else INSTALL_QP) if _extra else INSTALL, kind="gradient",
                      doc=_paper)
