"""How member profiles are built (the ``[profiles]`` config section).

Declared on the serving side (like :mod:`serving.bundle.index_options`) because the profile
builders in :mod:`serving.profiles` read the same defaults and ``serving`` never imports
``training``; ``training.config`` uses this class as its ``[profiles]`` section. Kept
free of heavy imports.

Every duration is in days on *the data's own clock*: "now" is the latest interaction
timestamp, never the wall clock, so a profile built from an old export reads the same
as one built the day it was exported.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProfileOptions:
    """The ``[profiles]`` section.

    Lifecycle stage (first matching rule wins; recency = clock - last activity, tenure =
    clock - first activity, both in days):

    1. ``new``      tenure <= ``new_days``
    2. ``active``   recency <= ``active_days``
    3. ``at_risk``  recency <= ``at_risk_days``
    4. ``dormant``  recency <= ``dormant_days``
    5. ``churned``  otherwise
    """

    enabled: bool = True
    """Build profiles, segments and the churn model with every bundle."""
    new_days: float = 30.0
    """Lifecycle ``new``: first activity at most this many days before the clock."""
    active_days: float = 30.0
    """Lifecycle ``active``: last activity at most this many days before the clock."""
    at_risk_days: float = 60.0
    """Lifecycle ``at_risk``: last activity at most this many days before the clock."""
    dormant_days: float = 120.0
    """Lifecycle ``dormant``: last activity at most this many days before the clock; older is ``churned``."""
    rfm_bins: int = 5
    """Quantile bins of the R, F and M scores (5 = quintiles). Named RFM segments are read
    from the scores rescaled to 1..5."""
    monetary_event_types: tuple[str, ...] = ("purchase", "order")
    """Events whose ``value`` is money: monetary = sum of their values. When the data has no
    value on any of them, monetary is the interaction count (recorded in the manifest)."""
    top_values: int = 3
    """Preferred values kept per item attribute (and top attributes per segment description)."""
    segments_k: int = 0
    """Embedding segments (k-means clusters); 0 = chosen by silhouette over
    ``segments_k_min..segments_k_max``."""
    segments_k_min: int = 2
    segments_k_max: int = 10
    silhouette_sample: int = 2000
    """Users sampled to compute silhouettes (quadratic in this number)."""
    churn_horizon_days: float = 30.0
    """Churn label: no activity in the ``churn_horizon_days`` after a cut."""
    churn_l2: float = 1.0
    """L2 penalty of the churn logistic regression (on standardised features)."""
    seed: int = 42
    """Seed of k-means and of the silhouette sample."""

    def problems(self) -> list[str]:
        """Range problems, each naming the key (``profiles.<key>: ...``); empty when valid."""
        checks: list[tuple[bool, str]] = [
            (self.new_days >= 0, "profiles.new_days: must be >= 0"),
            (self.active_days >= 0, "profiles.active_days: must be >= 0"),
            (
                self.active_days <= self.at_risk_days <= self.dormant_days,
                "profiles.at_risk_days: must lie between active_days and dormant_days",
            ),
            (self.rfm_bins >= 2, "profiles.rfm_bins: must be >= 2"),
            (self.top_values >= 1, "profiles.top_values: must be >= 1"),
            (self.segments_k >= 0, "profiles.segments_k: must be >= 0 (0 = choose by silhouette)"),
            (
                2 <= self.segments_k_min <= self.segments_k_max,
                "profiles.segments_k_min: must be >= 2 and <= segments_k_max",
            ),
            (self.silhouette_sample >= 10, "profiles.silhouette_sample: must be >= 10"),
            (self.churn_horizon_days > 0, "profiles.churn_horizon_days: must be > 0"),
            (self.churn_l2 >= 0, "profiles.churn_l2: must be >= 0"),
        ]
        return [message for ok, message in checks if not ok]
