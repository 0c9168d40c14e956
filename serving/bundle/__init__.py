"""The model bundle: a self-describing, versioned, checksummed directory, and the item index in it.

Owns the layout, writing and verified loading of a bundle (:mod:`~serving.bundle.format`), the
FAISS index (:mod:`~serving.bundle.index`), how its type is chosen and calibrated
(:mod:`~serving.bundle.index_options`, :mod:`~serving.bundle.index_calibration`) and the stored
user vectors computed once per bundle (:mod:`~serving.bundle.user_vectors`).

May import :mod:`serving.model`, :mod:`serving.profiles` (the profile table it carries), the
user index of :mod:`serving.audiences` and the top-level helpers.
"""

__all__ = ["format", "index", "index_calibration", "index_options", "user_vectors"]
