"""Losses (spec §6): per-task losses and the weighted multi-task criterion (+ aux, + MLoRE balancing)."""
from losses.criterion import MultiTaskCriterion, build_criterion
from losses.load_balancing import cv_squared, load_balancing_loss
from losses.task_losses import (LOSS_FUNCTIONS, LOSS_TYPE_OF_TASK, balanced_edge_bce, balanced_saliency_ce,
                                masked_cross_entropy, masked_l1, normalized_l1)

__all__ = [
    "MultiTaskCriterion", "build_criterion", "cv_squared", "load_balancing_loss", "LOSS_FUNCTIONS",
    "LOSS_TYPE_OF_TASK", "balanced_edge_bce", "balanced_saliency_ce", "masked_cross_entropy", "masked_l1",
    "normalized_l1",
]
