"""Fitting the two-tower model: the training loop, the retrieval losses, hyper-parameter search.

Towers live in :mod:`serving.model.towers`; losses apart from them (:mod:`~training.fit.losses`);
:mod:`~training.fit.trainer` is the loop, :mod:`~training.fit.tune` the Optuna search.
May import :mod:`training.config`, :mod:`training.features`, :mod:`training.evaluation` and
:mod:`serving.model`.
"""

__all__ = ["losses", "trainer", "tune"]
