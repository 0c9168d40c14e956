"""``recsys train``: inputs -> evaluated model -> bundle -> MLflow run and registered version.

1. Load and validate the inputs.
2. Unless ``eval.protocol = "none"``: split (time-respecting by default), fit encoders
   and train on the training part only, evaluate on the held-out part.
3. Fit encoders and train again on every interaction (``train.refit_full``), so the
   bundle knows every interaction it was given (on a CPU, in a child process while step 2
   trains, when that pays: :mod:`training.fit.refit`); otherwise reuse the evaluated model
   with histories from every interaction.
4. Build the item index the ``[index]`` section asks for, calibrated on user
   embeddings (recall@k against exact search for each search setting; the cheapest
   setting reaching the target is chosen), and log the curve and the choice.
5. Member profiles (``profiles.enabled``; :mod:`training.profiles.build`): behaviour, RFM,
   lifecycle, embedding segments and churn risk, stored in the bundle.
6. Write the bundle (atomic), log it to MLflow and register a model version.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import torch

from serving.audiences.search import UserIndex, build_user_index
from serving.bundle.format import BundleContents, write_bundle
from serving.bundle.index import EXACT_INNER_PRODUCT
from serving.bundle.index_calibration import BuiltIndex, build_calibrated_index, resolve_type
from serving.model.embedding import embed_items, embed_users
from serving.model.towers import TwoTowerModel
from training.config import Config, IndexConfig
from training.data.io import Dataset, load_dataset
from training.data.pseudonymise import pseudonymise_dataset
from training.evaluation import split_for
from training.evaluation.evaluate import evaluate
from training.features import Prepared, prepare
from training.fit.auto import Selection, fit_selected, select_objective
from training.fit.refit import BackgroundFit, FitInputs, concurrent_refit_threads
from training.fit.trainer import TrainResult, peak_rss_mb
from training.profiles.anomaly import AnomalyResult, detect
from training.profiles.build import profiles_for_bundle
from training.tracking import Tracker, flatten, start_run

log = logging.getLogger(__name__)
BUNDLE_ARTIFACT = "bundle"


@dataclass
class TrainSummary:
    bundle: Path
    model_version: str
    metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    total_seconds: float = 0.0
    samples_per_second: float = 0.0
    peak_rss_mb: float = 0.0
    run_id: str | None = None
    registered_version: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


def model_version_of(state_dict: dict[str, torch.Tensor]) -> str:
    """``YYYYMMDDTHHMMSSZ-<8 hex of the weights>``: sortable and content-addressed."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()[:8]
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{digest}"


INDEX_CALIBRATION_ARTIFACT = "index_calibration.json"


def build_item_index(
    item_embeddings: npt.NDArray[np.float32],
    user_embeddings: npt.NDArray[np.float32],
    options: IndexConfig,
) -> BuiltIndex:
    """The bundle's item index, calibrated on the embeddings of a seeded sample of
    ``options.sample_queries`` known users (the queries serving will run; rows of
    ``user_embeddings``); exact search (no calibration) when ``options`` resolve to it for
    this catalogue."""
    if resolve_type(len(item_embeddings), options, dim=item_embeddings.shape[1]) == EXACT_INNER_PRODUCT:
        return build_calibrated_index(item_embeddings, options)
    rng = np.random.default_rng(options.seed)
    n_users = len(user_embeddings)
    rows = np.sort(rng.choice(n_users, size=min(n_users, options.sample_queries), replace=False))
    return build_calibrated_index(item_embeddings, options, user_embeddings[rows])


@dataclass(frozen=True)
class AssembledBundle:
    """What :func:`bundle_contents` returns."""

    contents: BundleContents
    """Without profiles and privacy (the caller's to add)."""
    user_embeddings: npt.NDArray[np.float32]
    index: BuiltIndex
    """``contents.index`` and ``contents.user_index``, typed as present."""
    user_index: UserIndex


def bundle_contents(
    model: TwoTowerModel,
    data: Prepared,
    options: IndexConfig,
    *,
    config: dict[str, Any],
    metrics: dict[str, float],
    info: dict[str, Any],
) -> AssembledBundle:
    """The bundle of ``model`` (moved to the CPU, eval mode) trained on ``data``: its weights
    and version, every item's and user's embedding, the calibrated item and user indexes, and
    ``data``'s encoders and tables.

    The user embeddings are computed once and serve as the item index's calibration queries,
    the lookalike index (serving.audiences.search) and the profiles' embedding segments.
    """
    model = model.cpu().eval()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    version = model_version_of(state)
    item_embeddings = embed_items(model, data.item_features)
    user_rows = np.arange(data.sequences.rows, dtype=np.int64)
    user_embeddings = embed_users(model, data.user_features, data.sequences, user_rows)
    index = build_item_index(item_embeddings, user_embeddings, options)
    user_index = build_user_index(user_embeddings, options)
    contents = BundleContents(
        model_version=version,
        config=config,
        spec=model.spec,
        state_dict=state,
        user_encoder=data.user_encoder,
        item_encoder=data.item_encoder,
        user_table=data.user_table,
        item_table=data.item_table,
        sequences=data.sequences,
        popularity=data.popularity,
        item_embeddings=item_embeddings,
        metrics=metrics,
        info=info,
        index=index,
        user_index=user_index,
    )
    return AssembledBundle(contents, user_embeddings, index, user_index)


def log_index_calibration(tracker: Tracker, built: BuiltIndex) -> None:
    """Log the index choice and its calibration curve to the run.

    Params ``index.type``, ``index.params`` and ``index.search_params`` (JSON); metrics
    ``index.recall_at_k``, ``index.build_seconds``, ``index.calibration_seconds`` and, per
    ladder position (the step), ``index_calibration.recall`` and
    ``index_calibration.ms_per_query``; the whole record as ``index_calibration.json``.
    """
    record = built.manifest()
    tracker.log_params(
        {
            "index.type": built.spec.type,
            "index.params": json.dumps(dict(built.spec.params), sort_keys=True),
            "index.search_params": json.dumps(dict(built.spec.search_params), sort_keys=True),
        }
    )
    tracker.log_metrics(
        {
            "index.recall_at_k": built.recall_at_k,
            "index.build_seconds": built.build_seconds,
            "index.calibration_seconds": built.calibration_seconds,
        }
    )
    for step, point in enumerate(built.curve):
        tracker.log_metrics(
            {"index_calibration.recall": point.recall, "index_calibration.ms_per_query": point.ms_per_query},
            step=step,
        )
    tracker.log_dict(record, INDEX_CALIBRATION_ARTIFACT)


def _without_abnormal(
    interactions: pl.DataFrame, config: Config
) -> tuple[pl.DataFrame, AnomalyResult | None]:
    """(the model's training interactions, the abnormal-behaviour flags or None): with
    ``data.exclude_abnormal`` the flagged members' interactions are dropped (the flags are
    reused for their profiles); without it, everything is kept and nothing is detected here."""
    if not config.data.exclude_abnormal:
        return interactions, None
    abnormal = detect(interactions.lazy(), config.profiles)
    flagged = abnormal.frame.filter(pl.col("anomaly_flagged")).get_column("user_id")
    kept = interactions.filter(~pl.col("user_id").is_in(flagged.implode()))
    log.info(
        "data.exclude_abnormal: %d flagged members and their %d interactions left out of training",
        len(flagged),
        interactions.height - kept.height,
    )
    return kept, abnormal


def _log_loss(tracker: Tracker, stage: str, epoch: int, loss: float) -> None:
    tracker.log_metrics({f"{stage}_loss": loss}, step=epoch)


def _fit(prepared: Prepared, selection: Selection, tracker: Tracker, stage: str) -> TrainResult:
    def on_epoch(epoch: int, loss: float) -> None:
        _log_loss(tracker, stage, epoch, loss)

    return fit_selected(prepared, selection, on_epoch)


def train(
    config: Config,
    interactions: Path,
    users: Path | None,
    items: Path | None,
    out: Path,
    *,
    overwrite: bool = False,
    dataset: Dataset | None = None,
) -> TrainSummary:
    """Run the whole training job; returns what was produced and measured."""
    started = time.perf_counter()
    if Path(out).exists() and not overwrite:
        # Fail before hours of training, not after.
        raise FileExistsError(f"{out} already exists (use --overwrite to replace it atomically)")
    data = dataset if dataset is not None else load_dataset(interactions, users, items)
    # Once, before anything else reads the ids: every later stage sees only pseudonyms.
    data, privacy = pseudonymise_dataset(data, config.privacy)
    everything = data.interactions
    frame, abnormal = _without_abnormal(everything, config)
    counts = {
        "interactions": frame.height,
        "users": frame.get_column("user_id").n_unique(),
        "items": frame.get_column("item_id").n_unique(),
        "duplicates_dropped": data.duplicates_dropped,
    }
    if abnormal is not None:
        counts["abnormal_members_excluded"] = int(abnormal.frame.get_column("anomaly_flagged").sum())
    log.info(
        "loaded %d interactions (%d users, %d items); %d duplicates dropped",
        counts["interactions"],
        counts["users"],
        counts["items"],
        counts["duplicates_dropped"],
    )
    run_name = f"train-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    with start_run(config.tracking, run_name, {"job": "train"}) as tracker:
        tracker.log_params(flatten(config.to_dict()))
        tracker.log_dict(config.to_dict(), "config.json")
        tracker.log_params({f"data.{k}": v for k, v in counts.items()})

        metrics: dict[str, float] = {}
        eval_result: TrainResult | None = None
        train_part: Prepared | None = None
        run_id = tracker.info.run_id if tracker.info is not None else None
        final: TrainResult | None = None
        if config.eval.protocol != "none":
            parts = split_for(frame, config.eval.protocol, config.eval.min_interactions)
            # The objective and epoch count are chosen inside the training part: the test part is never seen.
            selection = select_objective(
                parts.train, data.users, data.items, config, config.eval.protocol, parent_run_id=run_id
            )
            train_part = prepare(parts.train, data.users, data.items, config.data)
            threads = (
                concurrent_refit_threads(config, selection, frame.height) if config.train.refit_full else 0
            )
            with contextlib.ExitStack() as stack:
                if threads:
                    refit = stack.enter_context(
                        BackgroundFit(
                            FitInputs(frame, data.users, data.items, config.data, selection), threads
                        )
                    )
                eval_result = _fit(train_part, selection, tracker, "eval_train")
                metrics = evaluate(eval_result.model, train_part, parts.test, config.eval.k)
                metrics = {f"{k}": float(v) for k, v in metrics.items()}
                tracker.log_metrics(metrics)
                log.info(
                    "evaluation (%s): %s",
                    config.eval.protocol,
                    ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
                )
                if threads:
                    final = refit.result()
                    for epoch, loss in enumerate(final.epoch_losses):
                        _log_loss(tracker, "train", epoch, loss)
        else:
            selection = select_objective(frame, data.users, data.items, config, "none", parent_run_id=run_id)
        tracker.log_params({"objective.chosen": selection.name, "objective.epochs": selection.epochs})
        tracker.log_dict(selection.manifest(), "objective.json")
        if config.train.refit_full or eval_result is None or train_part is None:
            final_data = prepare(frame, data.users, data.items, config.data)
            if final is None:  # else trained already, on data prepared the same way, in a child process
                final = _fit(final_data, selection, tracker, "train")
        else:
            final_data = prepare(
                frame,
                data.users,
                data.items,
                config.data,
                encoders=(train_part.user_encoder, train_part.item_encoder),
            )
            final = eval_result

        info = {
            "protocol": config.eval.protocol,
            "objective": selection.manifest(),
            "epoch_losses": final.epoch_losses,
            "train_seconds": round(final.seconds, 3),
            "inputs": {
                "interactions": str(interactions),
                "users": str(users) if users else None,
                "items": str(items) if items else None,
            },
            "input_counts": counts,
        }
        assembled = bundle_contents(
            final.model,
            final_data,
            config.index,
            config=selection.config.to_dict(),
            metrics=metrics,
            info=info,
        )
        version = assembled.contents.model_version
        log_index_calibration(tracker, assembled.index)
        tracker.log_params({"user_index.type": assembled.user_index.built.spec.type})
        # Profiles cover every member, flagged ones included (with their flags).
        profiles = profiles_for_bundle(
            config.profiles,
            everything,
            data.users,
            data.items,
            final_data,
            assembled.user_embeddings,
            tracker,
            abnormal,
        )
        summary = TrainSummary(
            bundle=Path(out),
            model_version=version,
            metrics=metrics,
            train_seconds=final.seconds,
            samples_per_second=final.samples_per_second,
            counts=counts,
        )
        contents = replace(
            assembled.contents,
            profiles=profiles.frame if profiles is not None else None,
            profiles_manifest=profiles.manifest if profiles is not None else {},
            privacy=privacy,
        )
        write_bundle(Path(out), contents, overwrite=overwrite)
        log.info("bundle %s written to %s", version, out)

        summary.total_seconds = time.perf_counter() - started
        summary.peak_rss_mb = peak_rss_mb()
        tracker.log_metrics(
            {
                "train_seconds": final.seconds,
                "samples_per_second": final.samples_per_second,
                "total_seconds": summary.total_seconds,
                "peak_rss_mb": summary.peak_rss_mb,
            }
        )
        tracker.set_tags({"model_version": version})
        tracker.log_directory(Path(out), BUNDLE_ARTIFACT)
        summary.registered_version = tracker.register_model(
            config.tracking.registered_model, BUNDLE_ARTIFACT, {"model_version": version}
        )
        if tracker.info is not None:
            summary.run_id = tracker.info.run_id
    return summary
