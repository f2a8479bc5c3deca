"""Is the ensemble's uncertainty informative? Sparsification curves, AUSE and rank correlation per task.

For every task with ground truth and an uncertainty map (docs/method.md#evaluating-uncertainty; Ilg et al.,
ECCV 2018; Poggi et al., CVPR 2020):

* per-pixel error e of the aggregated prediction: misclassification (0/1) for discrete tasks (saliency at
  its sample-rule threshold) and for boundaries at the ODS threshold of the boundary meter (0.5 without
  one); absolute error (metres) for depth; angular error (degrees) for normals; over the pixels the task's
  meter scores (GT not ignored);
* sparsification curve S(f): the mean error of the pixels left after removing the fraction f with the
  highest uncertainty u (the task's first uncertainty map, Task.uncertainty_maps), f = 0, 0.01, …, 0.99;
* oracle curve O(f): the same with the pixels ordered by their true error (the best any ordering can do);
  random curve R(f) = mean error (the expectation for an uninformative order);
* AUSE = ∫ (S - O) df over [0, 0.99] (trapezoid), AUSE_random = ∫ (R - O) df, their ratio (< 1: better
  than random; 0: oracle), and Spearman's ρ between u and e.

Pooled over the split and exact under DDP: every pixel adds to integer histograms (counts, and error sums
in fixed point 2^-16) on fixed bins, summed over ranks, so 1 and N processes give the same numbers bit for
bit. Bins: u and e are quantised on a square-root scale of a fixed range (u: the map's bound or range, e.g.
ln K for entropies, 40 m for depth std, 180°; e: 80 m, 180°), `U_BINS` bins; pixels in one bin are tied
(removed in proportion, the expectation of random tie-breaking); error sums are exact. ρ is computed from
the joint histogram with mid-ranks per bin.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.boundary import edge_thresholds
from utils.distributed import all_reduce_sum

__all__ = ["FRACTIONS", "UncertaintyMeter", "pixel_errors", "sparsification", "summary", "spearman_from_joint"]

FRACTIONS = np.arange(100) / 100.0  # removed fraction: 0, 0.01, …, 0.99
U_BINS = 1024
E_BINS = 1024
FIXED = 2 ** 16  # error sums in fixed point: exact integers, order-independent over ranks
# candidate ODS thresholds: those of the full and the in-training boundary protocols (evaluation/boundary.py)
EDGE_THRESHOLDS = np.unique(np.concatenate([edge_thresholds(101), edge_thresholds(11), [0.5]]))


def _sqrt_bins(x: torch.Tensor, hi: float, n: int) -> torch.Tensor:
    return (torch.sqrt((x.double() / hi).clamp(0, 1)) * n).long().clamp(0, n - 1)


def _u_range(task, name: str) -> float:
    rule = task.sample_rule[0]
    if name in ("entropy", "mutual_info"):
        return math.log(2.0) if rule == "sigmoid" else math.log(max(2, int(task.num_outputs)))
    if name == "angular_dev":
        return 180.0
    if rule == "clamp":
        return (float(task.sample_rule[2]) - float(task.sample_rule[1])) / 2
    return 100.0


def _e_range(task) -> float | None:
    """None for 0/1 errors (two bins), else the largest error."""
    rule = task.sample_rule[0]
    if rule == "clamp":
        return float(task.sample_rule[2]) - float(task.sample_rule[1])
    if rule == "l2":
        return 180.0
    if rule == "identity":
        return 100.0
    return None


def pixel_errors(task, pred: torch.Tensor, gt: torch.Tensor, threshold: float | None = None) -> tuple:
    """(error B×H×W float64, valid B×H×W bool) of the aggregated raw prediction against the ground truth;
    sigmoid tasks (edges): (probability B×H×W, GT edge B×H×W bool, valid): their error needs the threshold."""
    rule = task.sample_rule[0]
    gt = gt.float()
    if rule in ("argmax", "threshold"):
        g = gt[:, 0]
        valid = g != task.ignore_value
        if rule == "argmax":
            lab = pred.argmax(dim=1)
        else:
            lab = (torch.softmax(pred.float(), dim=1)[:, 1] > float(task.sample_rule[1])).long()
        return (lab != g.long()).double(), valid
    if rule == "sigmoid":
        g = gt[:, 0]
        return torch.sigmoid(pred.float()[:, 0]), g > 0.5, g != task.ignore_value
    if rule == "clamp":
        g = gt[:, 0]
        p = pred.float()[:, 0].clamp(float(task.sample_rule[1]), float(task.sample_rule[2]))
        valid = (g != task.ignore_value) & (g > float(task.sample_rule[1])) & (g < float(task.sample_rule[2]))
        return (p - g).abs().double(), valid
    if rule == "l2":
        valid = (gt != task.ignore_value).all(dim=1) & (gt.norm(dim=1) > 0)
        p = F.normalize(pred.float(), dim=1)
        g = F.normalize(torch.where(valid[:, None], gt, torch.zeros_like(gt)), dim=1)
        ang = torch.rad2deg(2.0 * torch.atan2((p - g).norm(dim=1), (p + g).norm(dim=1)))
        return ang.double(), valid
    if rule == "identity":
        valid = (gt != task.ignore_value).all(dim=1)
        return (pred.float() - gt).abs().mean(dim=1).double(), valid
    raise ValueError(f"task {task.name}: no per-pixel error for sample rule {task.sample_rule!r}")


class UncertaintyMeter:
    """update(pred B×K×H×W aggregated raw output, u B×H×W uncertainty, gt B×C×H×W); synchronize(); compute().

    Sums are int64 tensors (see the module docstring), so merging ranks is exact."""

    def __init__(self, task, map_name: str):
        self.task, self.map_name = task, map_name
        self.u_hi = _u_range(task, map_name)
        self.e_hi = _e_range(task)
        self.binary = self.e_hi is None
        self.edge = task.sample_rule[0] == "sigmoid"
        self.reset()

    def reset(self) -> None:
        if self.edge:  # per (u bin, probability interval between candidate thresholds, GT edge)
            self.sums = {"hist": torch.zeros(U_BINS, len(EDGE_THRESHOLDS) + 1, 2, dtype=torch.int64)}
        elif self.binary:
            self.sums = {"joint": torch.zeros(U_BINS, 2, dtype=torch.int64)}
        else:
            self.sums = {"joint": torch.zeros(U_BINS, E_BINS, dtype=torch.int64),
                         "err_u": torch.zeros(U_BINS, dtype=torch.int64),
                         "err_e": torch.zeros(E_BINS, dtype=torch.int64)}

    @torch.no_grad()
    def update(self, pred: torch.Tensor, u: torch.Tensor, gt: torch.Tensor) -> None:
        ub = _sqrt_bins(u.detach().cpu(), self.u_hi, U_BINS)
        if self.edge:
            p, is_edge, valid = (x.detach().cpu() for x in pixel_errors(self.task, pred, gt))
            # interval k: thresholds[k-1] < p <= thresholds[k]  ->  predicted edge at threshold t_i iff k > i
            k = torch.searchsorted(torch.as_tensor(EDGE_THRESHOLDS, dtype=torch.float64), p.double()[valid], right=False)
            idx = (ub[valid] * (len(EDGE_THRESHOLDS) + 1) + k) * 2 + is_edge[valid].long()
            self.sums["hist"] += torch.bincount(idx, minlength=self.sums["hist"].numel()).view_as(self.sums["hist"])
            return
        err, valid = (x.detach().cpu() for x in pixel_errors(self.task, pred, gt))
        e, ub = err[valid], ub[valid]
        if self.binary:
            idx = ub * 2 + e.long()
            self.sums["joint"] += torch.bincount(idx, minlength=U_BINS * 2).view(U_BINS, 2)
            return
        eb = _sqrt_bins(e, self.e_hi, E_BINS)
        fixed = torch.round(e * FIXED).long()
        self.sums["joint"] += torch.bincount(ub * E_BINS + eb, minlength=U_BINS * E_BINS).view(U_BINS, E_BINS)
        self.sums["err_u"] += torch.zeros(U_BINS, dtype=torch.int64).index_add_(0, ub, fixed)
        self.sums["err_e"] += torch.zeros(E_BINS, dtype=torch.int64).index_add_(0, eb, fixed)

    def synchronize(self) -> None:
        """Sum over ranks (a collective: every rank calls it)."""
        for v in self.sums.values():
            all_reduce_sum(v)

    def binned(self, threshold: float | None = None) -> tuple:
        """(joint counts U×E, error sums per u bin U, error sums per e bin E, per-e-bin mean error E) as float64."""
        if self.edge:
            t = 0.5 if threshold is None else float(threshold)
            i = int(np.argmin(np.abs(EDGE_THRESHOLDS - t)))
            h = self.sums["hist"].double()  # U × (T+1) × 2
            pos = h[:, i + 1:, :].sum(dim=1)  # predicted edge (p > t_i)
            neg = h[:, :i + 1, :].sum(dim=1)
            joint = torch.stack([pos[:, 1] + neg[:, 0], pos[:, 0] + neg[:, 1]], dim=1)  # correct, wrong
        else:
            joint = self.sums["joint"].double()
        if joint.shape[1] == 2:
            err_u, err_e, mean_e = joint[:, 1], torch.tensor([0.0, joint[:, 1].sum().item()]), torch.tensor([0.0, 1.0])
        else:
            err_u = self.sums["err_u"].double() / FIXED
            err_e = self.sums["err_e"].double() / FIXED
            cnt_e = joint.sum(dim=0)
            mean_e = torch.where(cnt_e > 0, err_e / cnt_e.clamp_min(1), torch.zeros_like(err_e))
        return joint, err_u, err_e, mean_e

    def compute(self, threshold: float | None = None) -> dict:
        """{'unc_ause', 'unc_ause_random', 'unc_ause_ratio', 'unc_spearman', 'unc_pixels', 'unc_map',
        'unc_curves': {'fractions', 'sparsification', 'oracle', 'random'}} (NaN values without pixels)."""
        joint, err_u, err_e, _ = self.binned(threshold)
        return summary(joint, err_u, err_e, self.map_name,
                       threshold if self.edge else None)


def sparsification(counts: np.ndarray, errors: np.ndarray, fractions=FRACTIONS) -> np.ndarray:
    """Mean error left after removing the fraction f of pixels, bins taken from the last one backwards
    (counts/errors per bin, in increasing order of the ranking key); a bin is removed in proportion."""
    counts, errors = np.asarray(counts, np.float64)[::-1], np.asarray(errors, np.float64)[::-1]
    total_n, total_e = counts.sum(), errors.sum()
    cum_n = np.concatenate([[0.0], np.cumsum(counts)])
    cum_e = np.concatenate([[0.0], np.cumsum(errors)])
    out = []
    for f in fractions:
        r = f * total_n
        k = int(np.searchsorted(cum_n, r, side="right")) - 1  # bins fully removed: 0..k-1
        k = min(max(k, 0), len(counts) - 1)
        part = (r - cum_n[k]) / counts[k] if counts[k] > 0 else 0.0
        removed = cum_e[k] + part * errors[k]
        left = total_n - r
        out.append((total_e - removed) / left if left > 0 else 0.0)
    return np.asarray(out)


def spearman_from_joint(joint: np.ndarray) -> float:
    """Spearman's ρ of (u, e) from joint bin counts (rows u bins, columns e bins, both ascending), ties
    within a bin sharing their mid-rank."""
    j = np.asarray(joint, np.float64)
    n = j.sum()
    if n < 2:
        return float("nan")

    def midranks(c):
        cum = np.cumsum(c)
        return cum - (c - 1) / 2.0  # 1-based mid-rank of each bin

    cu, ce = j.sum(axis=1), j.sum(axis=0)
    ru, re = midranks(cu), midranks(ce)
    mu = (n + 1) / 2.0
    du, de = ru - mu, re - mu
    cov = du @ j @ de
    vu, ve = (cu * du * du).sum(), (ce * de * de).sum()
    return float(cov / math.sqrt(vu * ve)) if vu > 0 and ve > 0 else float("nan")


def summary(joint, err_u, err_e, map_name: str, threshold: float | None = None) -> dict:
    """AUSE, its random-order value, their ratio, Spearman's ρ and the three curves from binned sums."""
    joint = np.asarray(joint, np.float64)
    cnt_u, cnt_e = joint.sum(axis=1), joint.sum(axis=0)
    n = float(cnt_u.sum())
    nan = float("nan")
    out = {"unc_map": map_name, "unc_pixels": int(n)}
    if threshold is not None:
        out["unc_threshold"] = float(threshold)
    if n == 0:
        out.update(unc_ause=nan, unc_ause_random=nan, unc_ause_ratio=nan, unc_spearman=nan)
        return out
    spars = sparsification(cnt_u, np.asarray(err_u, np.float64))
    oracle = sparsification(cnt_e, np.asarray(err_e, np.float64))
    rand = np.full_like(spars, float(np.asarray(err_u, np.float64).sum()) / n)
    ause = float(np.trapezoid(spars - oracle, FRACTIONS))
    ause_rand = float(np.trapezoid(rand - oracle, FRACTIONS))
    out.update(unc_ause=ause, unc_ause_random=ause_rand,
               unc_ause_ratio=ause / ause_rand if ause_rand > 0 else nan,
               unc_spearman=spearman_from_joint(joint),
               unc_curves={"fractions": FRACTIONS.tolist(), "sparsification": spars.tolist(),
                           "oracle": oracle.tolist(), "random": rand.tolist()})
    return out
