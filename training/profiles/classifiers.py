"""scikit-learn fits of the profile models, returned as data (:class:`LinearModel`).

Features are standardised with :class:`~sklearn.preprocessing.StandardScaler` and the GLM
is fitted on the standardised matrix, so the stored means, scales, coefficients and
intercept reproduce scikit-learn's ``predict_proba`` / ``predict`` with NumPy alone
(checked by the tests). ``l2`` is the penalty on the standardised coefficients
(scikit-learn's ``C = 1 / l2`` for the logistic regression, ``alpha = l2 / n`` for the
Poisson one, which scales its loss by ``1 / n``); the intercept is not penalised.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression, PoissonRegressor
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from serving.profiles.linear import LinearModel

FloatArray = npt.NDArray[np.float64]
MAX_ITERATIONS = 1000


def auc(labels: npt.NDArray[Any], scores: npt.NDArray[Any]) -> float:
    """ROC AUC; NaN when ``labels`` has one class only."""
    y = np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def _standardise(x: FloatArray) -> tuple[StandardScaler, FloatArray]:
    scaler = StandardScaler().fit(x)
    # Constant columns: StandardScaler keeps scale 1 for them, as the stored model needs.
    return scaler, np.asarray(scaler.transform(x), dtype=np.float64)


def _as_model(
    scaler: StandardScaler, coefficients: FloatArray, intercept: float, names: tuple[str, ...], link: str
) -> LinearModel:
    return LinearModel(
        features=names,
        mean=tuple(float(v) for v in scaler.mean_),
        scale=tuple(float(v) for v in scaler.scale_),
        coefficients=tuple(float(v) for v in np.ravel(coefficients)),
        intercept=float(intercept),
        link=link,
    )


def fit_logistic(x: FloatArray, y: npt.NDArray[Any], names: tuple[str, ...], l2: float) -> LinearModel:
    """L2-penalised logistic regression on standardised ``x`` (``l2 = 0``: no penalty)."""
    scaler, z = _standardise(x)
    penalty: dict[str, Any] = {"C": 1.0 / l2} if l2 > 0 else {"C": np.inf}
    fitted = LogisticRegression(max_iter=MAX_ITERATIONS, **penalty).fit(z, np.asarray(y, dtype=np.int64))
    return _as_model(scaler, fitted.coef_[0], float(fitted.intercept_[0]), names, "logit")


def fit_poisson(x: FloatArray, y: npt.NDArray[Any], names: tuple[str, ...], l2: float) -> LinearModel:
    """L2-penalised Poisson regression (log link) of counts ``y`` on standardised ``x``."""
    scaler, z = _standardise(x)
    fitted = PoissonRegressor(
        alpha=l2 / max(len(z), 1), solver="newton-cholesky", max_iter=MAX_ITERATIONS
    ).fit(z, np.asarray(y, dtype=np.float64))
    return _as_model(scaler, fitted.coef_, float(fitted.intercept_), names, "log")
