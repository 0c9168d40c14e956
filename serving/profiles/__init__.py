"""Member profiles: behaviour, RFM, lifecycle, embedding segments and churn risk.

Built at training time from the same inputs as the model (Polars lazy queries in
:mod:`~serving.profiles.build`), stored in the bundle (``profiles.parquet`` and the
manifest's ``profiles`` section), served by ``recsys.v1.MemberProfiles``, and kept up to
date by the events logged after the snapshot (:mod:`~serving.profiles.live`).
"""

__all__ = [
    "behaviour",
    "build",
    "churn",
    "lifecycle",
    "live",
    "lookup",
    "options",
    "rfm",
    "segments",
    "store",
    "wire",
]
