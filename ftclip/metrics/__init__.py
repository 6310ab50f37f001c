"""Evaluation metrics: re-identification (CMC/mAP) and image quality (SRCC/PLCC)."""

from ftclip.metrics.iqa import evaluate_iqa, plcc, plcc_logistic, srcc
from ftclip.metrics.reid import cmc_map_from_distances, evaluate_reid

__all__ = ["cmc_map_from_distances", "evaluate_iqa", "evaluate_reid", "plcc", "plcc_logistic", "srcc"]
