"""Losses (docs/method.md): per-task loss functions and the weighted multi-task criterion (+ aux, + MLoRE
balancing). Which function a task uses is the task's own declaration (data/tasks.py, `Task.loss`)."""
from losses.criterion import MultiTaskCriterion, build_criterion
from losses.load_balancing import cv_squared, load_balancing_loss
from losses.task_losses import (balanced_edge_bce, balanced_saliency_ce, masked_cross_entropy, masked_l1,
                                normalized_l1)

__all__ = [
    "MultiTaskCriterion", "build_criterion", "cv_squared", "load_balancing_loss", "balanced_edge_bce",
    "balanced_saliency_ce", "masked_cross_entropy", "masked_l1", "normalized_l1",
]
