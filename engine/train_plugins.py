"""The trainer's one interface to its plug-ins: the weight EMA (utils/ema.py) and multi-task loss
balancing (losses/balancing/). engine/trainer.py calls these hooks and nothing else of either.

Defaults: no EMA and `fixed` balancing, for which every hook is a no-op and the training step computes
exactly what it computed before the plug-ins existed (tests/engine/test_train_plugins.py checks the
losses and weights bit for bit).

Checkpoint entries (absent for the defaults, so their checkpoints are unchanged):
    ema             {'state': EMA state dict, 'updates': n, ...}       (utils.ema.WeightEMA.state_dict)
    loss_balancing  {'name': method, 'state': the balancer's state dict}
"""
from __future__ import annotations

from engine.evaluator import compute_delta_m, headline_metrics
from losses.balancing import build_balancer
from utils.checkpoint import CheckpointError
from utils.distributed import is_main_process
from utils.ema import EMA_KEY, build_ema, ema_settings
from utils.logger import get_logger

__all__ = ["TrainPlugins", "BALANCING_KEY"]

BALANCING_KEY = "loss_balancing"


class TrainPlugins:
    """Built by the Trainer after the optimizer and before the schedule (uncertainty weighting adds its
    log-variances to the optimizer as a parameter group, which the schedule must see)."""

    def __init__(self, cfg, model, criterion, optimizer, device):
        self.log = get_logger()
        self.ema_settings = ema_settings(cfg)
        self.ema = build_ema(cfg, model)
        self.balancer = build_balancer(cfg, criterion).to(device)
        self.balancer.attach(model)
        self.balancer.add_to_optimizer(optimizer)
        if self.ema is not None and is_main_process():
            s = self.ema_settings
            n = sum(p.numel() for p in self.ema.module.parameters())
            self.log.info(f"weight EMA: decay {s['decay']}, from iteration {s['start_iter']}, every {s['every']} "
                          f"iteration(s), buffers {s['buffers']}; memory {self.ema.num_bytes() / 2**20:.1f} MiB on "
                          f"{device} per process ({n:,} parameters), evaluated: {s['evaluate']}, best.pth on "
                          f"{s['select']}")
        if self.balancer.name != "fixed" and is_main_process():
            self.log.info(f"loss balancing: {self.balancer.name} (docs/method.md#multi-task-balancing)")

    # ---- checkpoints -----------------------------------------------------------------------------
    def state(self) -> dict | None:
        """The checkpoint's extra entries (None for the defaults: their checkpoints are unchanged)."""
        extra = {}
        if self.ema is not None:
            extra[EMA_KEY] = self.ema.state_dict()
        if self.balancer.name != "fixed":
            extra[BALANCING_KEY] = {"name": self.balancer.name, "state": self.balancer.state_dict()}
        return extra or None

    def load(self, ck: dict, model, path: str) -> None:
        """Resume: the balancer's and the EMA's state from the checkpoint (before the optimizer's)."""
        saved = ck.get(BALANCING_KEY) or {}
        was = saved.get("name", "fixed")
        if was != self.balancer.name:
            raise CheckpointError(
                f"{path} was trained with loss_balancing.name {was}, the config asks for {self.balancer.name}; "
                f"resume with the same method, or pass another --output_dir (with --trained_model {path} to "
                f"start from its weights)")
        if saved.get("state") is not None:
            self.balancer.load_state_dict(saved["state"])
        if self.ema is None:
            return
        if isinstance(ck.get(EMA_KEY), dict):
            self.ema.load_state_dict(ck[EMA_KEY])
        else:
            self.ema.set(model)
            self.log.warning(f"{path} has no weight EMA (ema was off when it was written): the EMA starts from "
                             f"its weights now")

    def restart_ema(self, model) -> None:
        """A fresh run from --trained_model weights: the EMA starts from them."""
        if self.ema is not None:
            self.ema.set(model)

    # ---- training -------------------------------------------------------------------------------
    def after_step(self, model, iteration: int) -> None:
        """After the optimizer step that completed `iteration` (skipped steps never get here)."""
        self.balancer.end_step(iteration)
        if self.ema is not None:
            self.ema.update(model, iteration)

    # ---- evaluation ---------------------------------------------------------------------------------
    def eval_weights(self, model) -> list:
        """[(which, module)] to evaluate, the one that picks best.pth first: [('raw', model)] without EMA."""
        if self.ema is None:
            return [("raw", model)]
        s = self.ema_settings
        sets = {"raw": model, "ema": self.ema.module}
        order = [s["select"]] + ([w for w in ("ema", "raw") if w != s["select"]] if s["evaluate"] == "both" else [])
        return [(w, sets[w]) for w in order]

    def eval_label(self, which: str) -> str:
        return "" if self.ema is None else f" ({which} weights)"

    @staticmethod
    def tb_prefix(which: str) -> str:
        """TensorBoard tag prefix: val/ for the raw weights (as without EMA), val_ema/ for the EMA's."""
        return "val" if which == "raw" else "val_ema"

    def describe_evaluations(self, payload: dict, runs: list, cfg, skip_zero: bool) -> list:
        """With EMA: payload gets 'weights' (whose metrics lead it) and 'by_weights' {which: {results,
        headline, delta_m}} for every evaluated set (against the same reference). Returns [(which, result,
        delta_m)] of the sets after the first."""
        if self.ema is None:
            return []
        ref = payload["delta_m_reference"]
        by, others = {}, []
        for i, (which, res) in enumerate(runs):
            dm = payload["delta_m"] if i == 0 else compute_delta_m(res.results, ref, cfg, skip_zero=skip_zero)
            by[which] = {"results": res.results, "headline": headline_metrics(res.results, cfg), "delta_m": dm}
            if i:
                others.append((which, res, dm))
        payload["weights"] = runs[0][0]
        payload["by_weights"] = by
        return others
