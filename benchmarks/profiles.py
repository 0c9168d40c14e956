"""Time the member-profile build on a canonical data directory (no model training).

    python -m benchmarks.profiles --data DIR [--dim 64] [--set profiles.KEY=VALUE ...]

User embeddings are random unit vectors (the build time of profiles, RFM, lifecycle and
churn does not depend on them; k-means and silhouette time depends only on their
shape), so this measures the Polars pipeline at sizes where training would take long.
Prints the seconds of each stage, the lifecycle and RFM distributions and the churn AUC.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from training.config import Config, load_config
from training.data.io import Dataset, find_canonical_files, load_dataset
from training.features import encoder_options
from training.profiles.build import BuiltProfiles, build_profiles


def profiles_with_random_embeddings(data: Dataset, config: Config, dim: int) -> BuiltProfiles:
    """Member profiles of ``data`` built as training builds them, with random ``dim``-wide user
    embeddings in place of a trained model's (the build does not depend on their values)."""
    from serving.model.features import EntityEncoder

    options = encoder_options(config.data)
    user_ids = data.interactions.get_column("user_id").unique().sort()
    item_ids = data.interactions.get_column("item_id").unique().sort()
    users = EntityEncoder.fit("user_id", user_ids, data.users, options)
    items = EntityEncoder.fit("item_id", item_ids, data.items, options)
    embeddings = np.random.default_rng(0).normal(size=(len(user_ids), dim)).astype(np.float32)
    return build_profiles(
        data.interactions,
        data.users,
        data.items,
        users.attribute_columns,
        items.attribute_columns,
        user_ids,
        embeddings,
        config.profiles,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    config = load_config(None, args.overrides)
    started = time.perf_counter()
    data = load_dataset(*find_canonical_files(args.data))
    loaded = time.perf_counter() - started

    started = time.perf_counter()
    built = profiles_with_random_embeddings(data, config, args.dim)
    total = time.perf_counter() - started
    section = built.manifest
    churn = section["churn"]
    print(
        f"{data.interactions.height:,} interactions, {section['users']:,} users: load {loaded:.1f} s, "
        f"profiles {section['seconds']['profiles']:.2f} s, segments {section['seconds']['segments']:.2f} s "
        f"(k={section['segments']['k']}, {section['segments']['chosen_by']}), "
        f"total with churn {total:.2f} s"
    )
    print("lifecycle:", json.dumps(section["lifecycle"]["counts"]))
    print("rfm:", json.dumps(section["rfm"]["counts"]))
    if churn.get("trained"):
        print(
            f"churn: AUC {churn['auc']:.4f} (validation base rate {churn['validation_base_rate']:.3f}, "
            f"{churn['validation_users']} users; fit on {churn['fit_users']})"
        )
    else:
        print(f"churn: not trained ({churn.get('reason')})")


if __name__ == "__main__":
    main()
