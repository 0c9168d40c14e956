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
    propensity_horizon_days: float = 30.0
    """Purchase propensity: a purchase within this many days after a cut; the activity
    forecast counts active days over the same horizon."""
    propensity_l2: float = 1.0
    """L2 penalty of the propensity (logistic) and activity (Poisson) regressions."""
    clv_horizon_days: float = 365.0
    """Lifetime value: expected purchases and spend over this many days after the clock."""
    clv_holdout_days: float = 30.0
    """Lifetime value: the last days of the data held out to validate BG/NBD (predicted vs
    actual purchases per decile, in the manifest)."""
    return_event_types: tuple[str, ...] = ("return", "refund")
    """Events that undo a purchase (abnormal behaviour's return-ratio rule; inactive when the
    data has none)."""
    shared_key_columns: tuple[str, ...] = ("device_hash", "address_hash")
    """Interaction columns holding a device or address hash (the many-accounts rule; inactive
    when the data has none). Only counts of accounts per value are used, never the values."""
    anomaly_max_events_per_minute: int = 30
    """Abnormal behaviour: more events than this in one clock minute is a burst."""
    anomaly_min_pace_seconds: float = 2.0
    """Abnormal behaviour: a median gap between consecutive events below this (over at least
    ``anomaly_min_events`` events) is an impossible, machine-like session pace."""
    anomaly_min_events: int = 20
    """Abnormal behaviour: the pace rule needs at least this many events."""
    anomaly_unbrowsed_share: float = 0.5
    """Abnormal behaviour: at least this share of a member's purchases (and at least 3) with no
    earlier event on the same item in the day before looks like fake orders."""
    anomaly_return_share: float = 0.5
    """Abnormal behaviour: returns / purchases at or above this (at least 3 returns)."""
    anomaly_max_accounts_per_key: int = 5
    """Abnormal behaviour: more accounts than this on one device or address hash."""
    anomaly_contamination: float = 0.01
    """Abnormal behaviour: at most this share of members is flagged by the IsolationForest
    (0 = rules only)."""
    anomaly_min_score: float = 0.72
    """Abnormal behaviour: the IsolationForest flags a member only with an anomaly score at
    least this (0.5 is an average member; ``recsys synth``'s regular members stay below 0.72,
    so a clean data set is not forced to give up its ``anomaly_contamination`` share)."""
    seed: int = 42
    """Seed of k-means, of the silhouette sample and of the IsolationForest."""

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
            (self.propensity_horizon_days > 0, "profiles.propensity_horizon_days: must be > 0"),
            (self.propensity_l2 >= 0, "profiles.propensity_l2: must be >= 0"),
            (self.clv_horizon_days > 0, "profiles.clv_horizon_days: must be > 0"),
            (self.clv_holdout_days > 0, "profiles.clv_holdout_days: must be > 0"),
            (
                self.anomaly_max_events_per_minute >= 1,
                "profiles.anomaly_max_events_per_minute: must be >= 1",
            ),
            (self.anomaly_min_pace_seconds >= 0, "profiles.anomaly_min_pace_seconds: must be >= 0"),
            (self.anomaly_min_events >= 2, "profiles.anomaly_min_events: must be >= 2"),
            (0 < self.anomaly_unbrowsed_share <= 1, "profiles.anomaly_unbrowsed_share: must be in (0, 1]"),
            (self.anomaly_return_share > 0, "profiles.anomaly_return_share: must be > 0"),
            (self.anomaly_max_accounts_per_key >= 1, "profiles.anomaly_max_accounts_per_key: must be >= 1"),
            (0 <= self.anomaly_contamination < 0.5, "profiles.anomaly_contamination: must be in [0, 0.5)"),
            (0 <= self.anomaly_min_score <= 1, "profiles.anomaly_min_score: must be in [0, 1]"),
        ]
        return [message for ok, message in checks if not ok]
