"""Member profiles: behaviour, RFM, lifecycle, embedding segments and the look-ahead figures
(churn risk, purchase propensity, activity, lifetime value, abnormal-behaviour flags).

Built at training time from the same inputs as the model (Polars lazy queries in
:mod:`~serving.profiles.build`), stored in the bundle (``profiles.parquet`` and the
manifest's ``profiles`` section), served by ``recsys.v1.MemberProfiles``, and kept up to
date by the events logged after the snapshot (:mod:`~serving.profiles.live`).
"""

__all__ = [
    "behaviour",
    "build",
    "campaign",
    "churn",
    "lifecycle",
    "linear",
    "live",
    "lookup",
    "options",
    "recent",
    "rfm",
    "segments",
    "store",
    "wire",
]
