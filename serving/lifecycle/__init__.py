"""Which model answers: the registry, the local bundle cache, live (hot-swapped) models, A/B routing.

Owns model references (``models:/NAME@ALIAS``), the one module that talks to MLflow
(:mod:`~serving.lifecycle.mlflow_store`), the engines a server holds and swaps
(:mod:`~serving.lifecycle.engine_holder`, :mod:`~serving.lifecycle.live_models`), the experiments
file and the router that picks a variant per user.

May import :mod:`serving.recommend`, :mod:`serving.bundle` and the top-level helpers; never
:mod:`serving.api`.
"""

__all__ = [
    "bundle_cache",
    "engine_holder",
    "experiments",
    "live_models",
    "mlflow_store",
    "model_ref",
    "routing",
]
