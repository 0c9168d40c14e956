"""Member profiles at training time: the profile table, embedding segments and the churn model.

The profile logic itself lives in :mod:`serving.profiles` (serving answers from it); this package
fits what needs training (:mod:`~training.profiles.churn`) and builds a bundle's profile table
(:mod:`~training.profiles.build`).
"""

__all__ = ["build", "churn"]
