"""Generalised linear models over profile features, stored as data and scored with NumPy.

The churn, purchase-propensity and activity models are fitted at training time with
scikit-learn (``training.profiles.classifiers``) on standardised features and stored in
the bundle manifest as plain numbers (feature names, standardisation means and scales,
coefficients, intercept, link), never as a pickle: scoring needs only NumPy, so the
serving image carries no scikit-learn, and a bundle cannot execute code when read.

``link = "logit"`` (logistic regression): ``p = sigmoid(b + w . (x - mean) / scale)``;
``link = "log"`` (Poisson regression): ``mu = exp(b + w . (x - mean) / scale)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
LINKS = ("logit", "log")


@dataclass(frozen=True)
class LinearModel:
    """A fitted GLM over standardised features (the manifest keeps :meth:`to_dict`)."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float
    link: str = "logit"

    def __post_init__(self) -> None:
        if self.link not in LINKS:
            raise ValueError(f"link: must be one of {', '.join(LINKS)}, got {self.link!r}")
        sizes = {len(self.features), len(self.mean), len(self.scale), len(self.coefficients)}
        if len(sizes) != 1:
            raise ValueError("features, mean, scale and coefficients must have the same length")

    def score(self, x: FloatArray) -> FloatArray:
        """Probability (logit) or expected count (log) per row of ``x`` (columns in
        :attr:`features` order)."""
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        eta = z @ np.asarray(self.coefficients) + self.intercept
        if self.link == "log":
            out: FloatArray = np.exp(np.clip(eta, -30, 30))
        else:
            out = 1.0 / (1.0 + np.exp(-np.clip(eta, -30, 30)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coefficients": list(self.coefficients),
            "intercept": self.intercept,
            "link": self.link,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearModel:
        """The model of :meth:`to_dict` (bundles written before ``link`` existed are logistic)."""
        return cls(
            tuple(data["features"]),
            tuple(float(v) for v in data["mean"]),
            tuple(float(v) for v in data["scale"]),
            tuple(float(v) for v in data["coefficients"]),
            float(data["intercept"]),
            str(data.get("link", "logit")),
        )
