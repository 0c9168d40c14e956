"""Offline evaluation: train/test splitting protocols and full-ranking top-K metrics."""

from training.evaluation.metrics import ranking_metrics, top_k_excluding, truth_csr
from training.evaluation.splits import (
    PROTOCOLS,
    Protocol,
    Split,
    leave_last_out,
    random_split,
    split,
    split_for,
    time_split,
)

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "Split",
    "leave_last_out",
    "random_split",
    "ranking_metrics",
    "split",
    "split_for",
    "time_split",
    "top_k_excluding",
    "truth_csr",
]
