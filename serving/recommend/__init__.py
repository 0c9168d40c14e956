"""The online recommender over one loaded bundle, shared by gRPC calls and batch (campaign) lists.

Owns the request and result types (:mod:`~serving.recommend.types`), the engine that plans and
answers queries (:mod:`~serving.recommend.engine`), index retrieval with filters, exclusions and
diversity, explanations, profile-based cold start and batch lists.

May import :mod:`serving.bundle`, :mod:`serving.model`, :mod:`serving.audiences` and the top-level
helpers; never :mod:`serving.lifecycle` or :mod:`serving.api`.
"""

__all__ = [
    "batch",
    "cold_start",
    "diversity",
    "engine",
    "explain",
    "filters",
    "retrieval",
    "types",
]
