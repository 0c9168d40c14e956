"""Pseudonymisation of user ids at ingest (``[privacy] pseudonymise_user_ids``).

Applied once, right after the inputs are read and validated, so that every later stage
(splits, features, the bundle, member profiles, anything written from the training data)
sees only pseudonyms. The hashing itself lives in :mod:`serving.pseudonym`, shared with
serving, which hashes request ids with the same key.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from serving.pseudonym import Pseudonymiser
from training.config import PrivacyConfig
from training.data.io import Dataset

log = logging.getLogger(__name__)


def pseudonymise_dataset(
    data: Dataset, config: PrivacyConfig, environ: Mapping[str, str] | None = None
) -> tuple[Dataset, dict[str, Any]]:
    """(``data`` with every ``user_id`` replaced by its pseudonym, the manifest's ``privacy``
    section); ``data`` unchanged and an empty section when pseudonymisation is off.

    Raises :class:`~serving.pseudonym.PseudonymKeyError` naming the environment variable
    (never its value) when the key is missing or too short.
    """
    if not config.pseudonymise_user_ids:
        return data, {}
    pseudonymiser = Pseudonymiser.from_environment(config.key_env, environ)
    raw_ids = data.interactions.get_column("user_id")
    interactions = data.interactions.with_columns(pseudonymiser.series(raw_ids))
    users = data.users
    if users is not None:
        users = users.with_columns(pseudonymiser.series(users.get_column("user_id")))
    log.info("user ids pseudonymised (HMAC-SHA256, key from $%s)", config.key_env)
    section = pseudonymiser.manifest_section(config.key_env)
    return dataclasses.replace(data, interactions=interactions, users=users), section
