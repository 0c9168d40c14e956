"""Look-ahead profile models on data the tests generate: scikit-learn GLMs stored as data,
time-respecting cuts, purchase propensity, BG/NBD + Gamma-Gamma lifetime value, abnormal
behaviour on injected fraud, and the training-data exclusion switch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sklearn.linear_model import LogisticRegression, PoissonRegressor
from sklearn.preprocessing import StandardScaler

from serving.profiles.behaviour import DAY_SECONDS
from serving.profiles.build import ProfileInputs, profile_context
from serving.profiles.linear import LinearModel
from serving.profiles.options import ProfileOptions
from training.config import ConfigError, load_config
from training.data.synth import FRAUD_FILE, SynthConfig, synthesize
from training.pipeline import _without_abnormal
from training.profiles.anomaly import detect
from training.profiles.classifiers import fit_logistic, fit_poisson
from training.profiles.clv import (
    BgNbd,
    Buyers,
    GammaGamma,
    bgnbd_log_likelihood,
    expected_purchases,
    expected_spend,
    fit_bgnbd,
    fit_gamma_gamma,
    train_clv,
)
from training.profiles.cuts import Cuts, cut_frame
from training.profiles.propensity import train_activity, train_propensity

CLOCK = 1_700_000_000


@pytest.fixture(scope="module")
def fraud_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 regular members (~12000 events) plus 8 injected fraud members."""
    out = tmp_path_factory.mktemp("fraud")
    synthesize(SynthConfig(users=400, items=60, events=12_000, fraud_users=8), out)
    return out


def _cuts(interactions: pl.DataFrame, options: ProfileOptions | None = None) -> Cuts:
    options = options or ProfileOptions()
    inputs = ProfileInputs(interactions.lazy())
    return Cuts(inputs, profile_context(inputs, options), options)


def _rows(rows: list[tuple[str, str, int, str, float | None]], **extra: list[str]) -> pl.DataFrame:
    frame = pl.DataFrame(
        rows,
        schema={
            "user_id": pl.Utf8,
            "item_id": pl.Utf8,
            "timestamp": pl.Int64,
            "event_type": pl.Utf8,
            "value": pl.Float64,
        },
        orient="row",
    )
    return frame.with_columns(pl.Series(k, v) for k, v in extra.items())


# ------------------------------------------------------------------ GLMs stored as data


def test_glms_are_stored_as_numbers_and_score_like_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(loc=[5.0, -2.0, 0.0], scale=[3.0, 0.5, 1.0], size=(500, 3))
    x[:, 2] = 1.0  # a constant column keeps scale 1
    y = (x[:, 0] - 4 * x[:, 1] + rng.normal(size=500) > 13).astype(float)
    model = fit_logistic(x, y, ("a", "b", "c"), l2=1.0)
    reference = LogisticRegression(C=1.0, max_iter=1000).fit(StandardScaler().fit_transform(x), y)
    expected = reference.predict_proba(StandardScaler().fit(x).transform(x))[:, 1]
    np.testing.assert_allclose(model.score(x), expected, atol=1e-6)
    assert model.scale[2] == 1.0
    assert model.coefficients[2] == 0.0
    assert LinearModel.from_dict(model.to_dict()) == model
    assert all(isinstance(v, float) for v in model.to_dict()["coefficients"])

    counts = rng.poisson(np.exp(0.3 * x[:, 0] - 1.0)).astype(float)
    poisson = fit_poisson(x, counts, ("a", "b", "c"), l2=1.0)
    assert poisson.link == "log"
    z = StandardScaler().fit(x).transform(x)
    reference_poisson = PoissonRegressor(alpha=1.0 / 500, solver="newton-cholesky").fit(z, counts)
    np.testing.assert_allclose(poisson.score(x), reference_poisson.predict(z), rtol=1e-4)
    with pytest.raises(ValueError, match="link"):
        LinearModel(("a",), (0.0,), (1.0,), (1.0,), 0.0, link="probit")


def test_cut_features_never_read_events_after_the_cut(fraud_data: Path) -> None:
    interactions = pl.read_parquet(fraud_data / "interactions.parquet")
    cuts = _cuts(interactions)
    cut = cuts.context.clock + 1 - 30 * DAY_SECONDS
    before = cut_frame(cuts.inputs, cuts.context, cuts.options, cut, 30 * DAY_SECONDS)
    # A burst of purchases after the cut changes the outcomes, never the features.
    member = str(before.item(0, "user_id"))
    later = _rows([(member, "i000001", cut + 3600 * h, "purchase", 9.0) for h in range(5)])
    changed = pl.concat([interactions, later])
    after = cut_frame(ProfileInputs(changed.lazy()), cuts.context, cuts.options, cut, 30 * DAY_SECONDS)
    features = [c for c in before.columns if not c.startswith("future_")]
    # Equal up to the order Polars adds a member's amounts in (the extra rows make another chunk
    # layout: 99.94 against 99.93999999999998 was seen).
    assert_frame_equal(after.select(features), before.select(features), check_exact=False, rel_tol=1e-12)
    row = after.filter(pl.col("user_id") == member)
    assert row.item(0, "future_purchases") >= 5


def test_propensity_beats_the_recency_rule_on_a_later_cut(fraud_data: Path) -> None:
    cuts = _cuts(pl.read_parquet(fraud_data / "interactions.parquet"))
    result = train_propensity(cuts)
    meta = result.metadata
    assert meta["trained"]
    assert result.model is not None
    assert meta["fit_cut"] < meta["validation_cut"]
    assert meta["auc"] > meta["recency_rule_auc"] > 0.5
    assert "days_since_purchase" in meta["features"]
    activity = train_activity(cuts)
    assert activity.metadata["trained"]
    assert activity.model is not None
    assert activity.model.link == "log"
    assert activity.metadata["mae"] > 0


def test_propensity_says_why_without_purchase_events() -> None:
    rows = [
        (f"u{u}", "i1", CLOCK - d * DAY_SECONDS, "rating", 4.0) for u in range(30) for d in range(0, 90, 7)
    ]
    result = train_propensity(_cuts(_rows(rows)))
    assert result.model is None
    assert "no purchase events" in result.metadata["reason"]


# ------------------------------------------------------------------ lifetime value


def _simulate_bgnbd(
    params: BgNbd, customers: int, calibration: float, holdout: float, seed: int
) -> tuple[Buyers, np.ndarray]:
    """Buyers acquired at random times before the calibration end, their (x, t_x, T) and their
    purchases in the holdout that follows, drawn from the BG/NBD story itself."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(params.r, 1.0 / params.alpha, customers)
    dropout = rng.beta(params.a, params.b, customers)
    first = rng.uniform(0, calibration * 0.8, customers)
    now = first.copy()
    alive = np.ones(customers, dtype=bool)
    x = np.zeros(customers)
    last = first.copy()
    held = np.zeros(customers)
    while alive.any():
        now = now + rng.exponential(1.0 / rate)
        alive &= now < calibration + holdout
        in_calibration = alive & (now < calibration)
        x += in_calibration
        last = np.where(in_calibration, now, last)
        held += alive & (now >= calibration)
        alive &= rng.random(customers) >= dropout  # may drop out after each repeat purchase
    return Buyers(
        pl.Series([str(i) for i in range(customers)]), x, last - first, calibration - first, None
    ), held


def test_bgnbd_recovers_its_parameters_and_predicts_the_holdout() -> None:
    truth = BgNbd(r=0.8, alpha=20.0, a=0.6, b=3.0)
    data, holdout = _simulate_bgnbd(truth, 4000, calibration=180.0, holdout=60.0, seed=1)
    fitted = fit_bgnbd(data)
    assert fitted.r == pytest.approx(truth.r, rel=0.25)
    assert fitted.alpha == pytest.approx(truth.alpha, rel=0.35)
    assert fitted.a / (fitted.a + fitted.b) == pytest.approx(truth.a / (truth.a + truth.b), rel=0.35)
    predicted = expected_purchases(fitted, data.x, data.t_x, data.big_t, 60.0)
    assert predicted.sum() == pytest.approx(holdout.sum(), rel=0.1)
    # Ranked by prediction, the top decile buys far more in the holdout than the bottom one.
    order = np.argsort(predicted)
    assert holdout[order[-400:]].mean() > 3 * holdout[order[:400]].mean()


def test_bgnbd_log_likelihood_is_the_papers_formula() -> None:
    from scipy.special import beta, gamma

    params = BgNbd(r=0.5, alpha=10.0, a=0.8, b=2.0)
    x, t_x, big_t = np.array([0.0, 3.0]), np.array([0.0, 20.0]), np.array([30.0, 40.0])
    r, al, a, b = 0.5, 10.0, 0.8, 2.0
    expected = []
    for xi, ti, ti_big in zip(x, t_x, big_t, strict=True):
        common = beta(a, b + xi) / beta(a, b) * gamma(r + xi) * al**r / gamma(r)
        value = common / (al + ti_big) ** (r + xi)
        if xi > 0:
            value += (
                beta(a + 1, b + xi - 1)
                / beta(a, b)
                * gamma(r + xi)
                * al**r
                / gamma(r)
                / (al + ti) ** (r + xi)
            )
        expected.append(np.log(value))
    np.testing.assert_allclose(bgnbd_log_likelihood(params, x, t_x, big_t), expected, rtol=1e-10)


def test_gamma_gamma_fits_spend_and_shrinks_towards_the_population_mean() -> None:
    rng = np.random.default_rng(2)
    truth = GammaGamma(p=6.0, q=4.0, gamma=15.0)
    nu = rng.gamma(truth.q, 1.0 / truth.gamma, 3000)
    n = rng.integers(1, 8, 3000).astype(float)
    m = np.array([rng.gamma(truth.p, 1.0 / v, int(k)).mean() for v, k in zip(nu, n, strict=True)])
    fitted = fit_gamma_gamma(n, m)
    population = fitted.p * fitted.gamma / (fitted.q - 1)
    assert population == pytest.approx(truth.p * truth.gamma / (truth.q - 1), rel=0.1)
    # One cheap order says little; many cheap orders say more.
    one, many = expected_spend(fitted, np.array([1.0, 20.0]), np.array([5.0, 5.0]))
    assert 5.0 < many < one < population


def test_clv_is_validated_per_decile_and_never_invents_money(fraud_data: Path) -> None:
    interactions = pl.read_parquet(fraud_data / "interactions.parquet")
    clock = int(interactions.get_column("timestamp").max())
    with_money = train_clv(interactions.lazy(), clock, ("purchase",), True, 365.0, 30.0)
    meta = with_money.metadata
    assert meta["trained"]
    assert meta["has_money"]
    validation = meta["validation"]
    assert validation["done"]
    assert len(validation["deciles"]) == 10
    assert validation["predicted_total"] == pytest.approx(validation["actual_total"], rel=0.35)
    assert validation["deciles"][-1]["actual_purchases"] > validation["deciles"][0]["actual_purchases"]
    assert with_money.frame is not None
    assert with_money.frame.get_column("clv_value").min() > 0

    no_amounts = interactions.with_columns(pl.lit(None, dtype=pl.Float64).alias("value"))
    without = train_clv(no_amounts.lazy(), clock, ("purchase",), False, 365.0, 30.0)
    assert without.metadata["trained"]
    assert not without.metadata["has_money"]
    assert without.metadata["gamma_gamma"] is None
    assert "no amounts" in without.metadata["money_note"]
    assert without.frame is not None
    assert without.frame.get_column("clv_value").null_count() == without.frame.height
    assert without.frame.get_column("clv_expected_purchases").null_count() == 0


# ------------------------------------------------------------------ abnormal behaviour


def test_synth_injects_known_fraud_without_changing_regular_members(tmp_path: Path) -> None:
    plain = synthesize(SynthConfig(users=100, items=30, events=2000), tmp_path / "plain")
    fraud = synthesize(SynthConfig(users=100, items=30, events=2000, fraud_users=4), tmp_path / "fraud")
    assert plain.fraud_path is None
    assert fraud.fraud_path == tmp_path / "fraud" / FRAUD_FILE
    truth = pl.read_parquet(fraud.fraud_path)
    assert sorted(truth.get_column("kind").to_list()) == ["bot", "bot", "fake_orders", "fake_orders"]
    assert fraud.users == 104
    regular = pl.read_parquet(fraud.interactions_path).filter(
        ~pl.col("user_id").is_in(truth.get_column("user_id").implode())
    )
    assert regular.sort("timestamp", "user_id", "item_id", "event_type").equals(
        pl.read_parquet(plain.interactions_path).sort("timestamp", "user_id", "item_id", "event_type")
    )
    with pytest.raises(ValueError, match="fraud_users"):
        SynthConfig(fraud_users=-1)


def test_injected_fraud_is_flagged_with_reasons(fraud_data: Path) -> None:
    interactions = pl.read_parquet(fraud_data / "interactions.parquet")
    truth = pl.read_parquet(fraud_data / FRAUD_FILE)
    result = detect(interactions.lazy(), ProfileOptions())
    flagged = result.frame.filter(pl.col("anomaly_flagged")).join(truth, on="user_id", how="left")
    true_positives = flagged.filter(pl.col("kind").is_not_null()).height
    assert true_positives / flagged.height >= 0.8  # precision
    assert true_positives == truth.height  # recall
    reasons = dict(zip(flagged["user_id"], flagged["anomaly_reasons"].to_list(), strict=True))
    for user, kind in truth.iter_rows():
        text = " ".join(reasons[user])
        assert ("event burst" in text) if kind == "bot" else ("purchases without browsing" in text)
    meta = result.metadata
    assert set(meta["inactive_rules"]) == {"returns", "shared_key"}
    assert meta["flagged"] == flagged.height


def test_return_and_shared_hash_rules_apply_when_the_data_has_them() -> None:
    rows, devices = [], []
    for u in range(30):
        for d in range(4):
            at = CLOCK - (10 + 5 * d + u) * DAY_SECONDS
            rows += [(f"u{u}", f"i{d}", at, "view", None), (f"u{u}", f"i{d}", at + 60, "purchase", 20.0)]
            # u0..u6 share one device; everyone else has their own.
            devices += ["dev-shared" if u < 7 else f"dev-{u}"] * 2
    for d in range(4):  # u29 returns every purchase
        rows.append(("u29", f"i{d}", CLOCK - (5 * d + 5) * DAY_SECONDS, "return", 20.0))
        devices.append("dev-29")
    options = ProfileOptions(anomaly_contamination=0.0)
    result = detect(_rows(rows, device_hash=devices).lazy(), options)
    reasons = dict(zip(result.frame["user_id"], result.frame["anomaly_reasons"].to_list(), strict=True))
    assert reasons["u29"] == ["returns: 4 returns for 4 purchases"]
    assert reasons["u3"] == ["7 accounts on one device or address hash"]
    assert reasons["u10"] == []
    assert result.metadata["inactive_rules"] == {}


def test_exclude_abnormal_drops_flagged_members_from_the_training_data(fraud_data: Path) -> None:
    interactions = pl.read_parquet(fraud_data / "interactions.parquet")
    truth = pl.read_parquet(fraud_data / FRAUD_FILE)
    kept, flags = _without_abnormal(interactions, load_config(None, []))
    assert kept.height == interactions.height
    assert flags is None
    config = load_config(None, ["data.exclude_abnormal=true"])
    kept, flags = _without_abnormal(interactions, config)
    assert flags is not None
    assert not kept.get_column("user_id").is_in(truth.get_column("user_id").implode()).any()
    assert kept.height < interactions.height
    with pytest.raises(ConfigError, match=r"profiles\.anomaly_contamination"):
        load_config(None, ["profiles.anomaly_contamination=0.7"])
