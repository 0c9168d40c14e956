"""Lookalike audiences: the N users most similar to a seed group, online and as campaign files.

Owns the user index search (:mod:`~serving.audiences.search`) and the ``recsys lookalike`` file
job (:mod:`~serving.audiences.batch`).

May import :mod:`serving.bundle` (the index builders) and the top-level helpers; the batch job
also uses :mod:`serving.recommend` to load an engine.
"""

__all__ = ["batch", "search"]
