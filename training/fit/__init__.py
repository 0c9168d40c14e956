"""Fitting the two-tower model: the training loop, the retrieval losses, hyper-parameter search.

Towers live in :mod:`serving.model.towers`; losses apart from them (:mod:`~training.fit.losses`);
:mod:`~training.fit.trainer` is the loop, one *task* per objective (the iterative ones in
``interaction_task`` and ``sequence_task``; those that write linear towers, the closed forms and
ELSA, in :mod:`~training.fit.linear`), :mod:`~training.fit.auto` the choice between them on a
validation split, :mod:`~training.fit.blend` the blend of two, :mod:`~training.fit.tune` the Optuna
search.
May import :mod:`training.config`, :mod:`training.features`, :mod:`training.evaluation` and
:mod:`serving.model`.
"""

__all__ = ["auto", "blend", "linear", "losses", "trainer", "tune"]
