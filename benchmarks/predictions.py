"""Figures of the look-ahead models on a canonical data directory (no model training).

    python -m training.cli.main synth --out DIR --fraud-users 40
    python -m benchmarks.predictions --data DIR [--set profiles.KEY=VALUE ...]

Builds the member profiles as a bundle would (random unit user embeddings: the look-ahead
models do not read them) and prints, on the data's own time cuts:

* purchase propensity: ROC AUC against the recency rule on the same cut;
* activity forecast: mean absolute error against the run-rate rule;
* churn: ROC AUC (scikit-learn logistic regression);
* lifetime value: BG/NBD fitted before the holdout, predicted vs actual purchase occasions
  (and spend) in the holdout per decile of prediction;
* abnormal behaviour: precision and recall on the injected fraud (``DIR/fraud.parquet`` from
  ``recsys synth --fraud-users``), overall, for the rules alone and for the IsolationForest alone.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks.profiles import profiles_with_random_embeddings
from training.config import load_config
from training.data.io import find_canonical_files, load_dataset
from training.data.synth import FRAUD_FILE


def _precision_recall(flagged: pl.Series, truth: pl.Series) -> str:
    true_positives = int((flagged & truth).sum())
    precision = true_positives / max(int(flagged.sum()), 1)
    recall = true_positives / max(int(truth.sum()), 1)
    return f"precision {precision:.3f}, recall {recall:.3f} ({int(flagged.sum())} flagged)"


def print_fraud(frame: pl.DataFrame, fraud: Path) -> None:
    truth = pl.read_parquet(fraud)
    joined = frame.select("user_id", "anomaly_flagged", "anomaly_reasons").join(
        truth, on="user_id", how="left"
    )
    is_fraud = joined.get_column("kind").is_not_null()
    reasons = joined.get_column("anomaly_reasons")
    forest = reasons.list.eval(pl.element().str.starts_with("isolation forest")).list.any()
    rules = reasons.list.eval(~pl.element().str.starts_with("isolation forest")).list.any()
    print(f"abnormal behaviour: {truth.height} injected fraud members among {joined.height}")
    print(f"  rules + IsolationForest: {_precision_recall(joined.get_column('anomaly_flagged'), is_fraud)}")
    print(f"  rules alone:             {_precision_recall(rules, is_fraud)}")
    print(f"  IsolationForest alone:   {_precision_recall(forest, is_fraud)}")
    for kind in truth.get_column("kind").unique().sort().to_list():
        of_kind = joined.get_column("kind") == kind
        caught = int((of_kind.fill_null(False) & joined.get_column("anomaly_flagged")).sum())
        print(f"  {kind}: {caught} of {int(of_kind.sum())} flagged")


def print_clv(clv: dict[str, Any]) -> None:
    if not clv.get("trained"):
        print(f"lifetime value: not trained ({clv.get('reason')})")
        return
    validation = clv["validation"]
    params = ", ".join(f"{k}={v:.4g}" for k, v in clv["bgnbd"].items())
    print(f"lifetime value: BG/NBD {params} on {clv['buyers']} buyers; money: {clv['has_money']}")
    if not validation.get("done"):
        print(f"  validation not done ({validation.get('reason')})")
        return
    print(
        f"  holdout {clv['holdout_days']:g} days, {validation['buyers']} buyers: predicted "
        f"{validation['predicted_total']:.1f} vs actual {validation['actual_total']:.1f} purchase occasions, "
        f"correlation {validation['correlation']:.3f}"
    )
    money = "predicted_spend" in validation["deciles"][0]
    if money:
        print(
            f"  holdout spend: predicted {validation['predicted_spend_total']:.0f} vs actual "
            f"{validation['actual_spend_total']:.0f}"
        )
    print("  decile  buyers  predicted  actual" + ("  pred_spend  actual_spend" if money else ""))
    for row in validation["deciles"]:
        line = (
            f"  {row['decile']:>6}  {row['buyers']:>6}  {row['predicted_purchases']:>9.3f}"
            f"  {row['actual_purchases']:>6.3f}"
        )
        if money:
            line += f"  {row['predicted_spend']:>10.2f}  {row['actual_spend']:>12.2f}"
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--fraud", type=Path, help=f"injected fraud truth (default DATA/{FRAUD_FILE})")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    config = load_config(None, args.overrides)
    data = load_dataset(*find_canonical_files(args.data))

    started = time.perf_counter()
    built = profiles_with_random_embeddings(data, config, 16)
    total = time.perf_counter() - started
    section = built.manifest
    print(
        f"{data.interactions.height:,} interactions, {section['users']:,} members; profiles built in "
        f"{total:.1f} s (look-ahead models {section['seconds']['lookahead']:.1f} s)"
    )
    propensity, activity, churn = section["propensity"], section["activity"], section["churn"]
    if propensity.get("trained"):
        print(
            f"purchase propensity ({propensity['horizon_days']:g} days): AUC {propensity['auc']:.4f} vs "
            f"recency rule {propensity['recency_rule_auc']:.4f} (base rate "
            f"{propensity['validation_base_rate']:.3f}, {propensity['validation_users']} users)"
        )
    else:
        print(f"purchase propensity: not trained ({propensity.get('reason')})")
    if activity.get("trained"):
        print(
            f"activity ({activity['horizon_days']:g} days): MAE {activity['mae']:.3f} active days vs "
            f"run-rate rule {activity['run_rate_rule_mae']:.3f} (mean actual {activity['mean_actual']:.3f}, "
            f"predicted {activity['mean_predicted']:.3f})"
        )
    if churn.get("trained"):
        print(
            f"churn ({churn['horizon_days']:g} days, scikit-learn): AUC {churn['auc']:.4f} "
            f"(base rate {churn['validation_base_rate']:.3f}, {churn['validation_users']} users)"
        )
    print_clv(section["clv"])
    fraud = args.fraud if args.fraud is not None else args.data / FRAUD_FILE
    if fraud.is_file():
        print_fraud(built.frame, fraud)
    else:
        anomaly = section["anomaly"]
        print(f"abnormal behaviour: {anomaly['flagged']} flagged ({fraud} absent: no precision/recall)")


if __name__ == "__main__":
    main()
