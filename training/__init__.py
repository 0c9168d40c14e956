"""Training side: data in, evaluated model and bundle out, tracked in MLflow.

Packages on the flow: :mod:`training.data` (readers, importers, synthetic data, pseudonymisation)
-> :mod:`training.features` (fit encoders, encode interactions) -> :mod:`training.fit` (the
training loop, losses, tuning) -> :mod:`training.evaluation` (splits, metrics, baselines, the
benchmark) -> :mod:`training.pipeline` (bundle, MLflow run, registered version).
:mod:`training.profiles` builds member profiles, :mod:`training.reports` renders A/B and segment
reports, :mod:`training.promotion` moves registry aliases, :mod:`training.cli` is the ``recsys``
command. May import :mod:`serving`; :mod:`serving` never imports this package.
"""

__all__ = [
    "cli",
    "config",
    "data",
    "evaluation",
    "features",
    "fit",
    "pipeline",
    "profiles",
    "promotion",
    "reports",
    "tracking",
]
