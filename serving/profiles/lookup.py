"""One member's profile straight from a bundle directory (``recsys profile``), no model load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from serving.bundle.format import read_manifest, verify_checksums
from serving.profiles.store import PROFILES_FILE, ProfileStore
from serving.profiles.wire import to_profile
from serving.pseudonym import user_id_mapper


def lookup_profile(bundle: Path, user_id: str) -> dict[str, Any]:
    """The ``UserProfile`` of ``user_id`` as JSON-ready data (proto field names).

    Raises :class:`~serving.errors.BundleError` (bad bundle, missing pseudonym key),
    :class:`~serving.errors.FeatureUnavailableError` (no profiles) or
    :class:`~serving.errors.NotFoundError` (unknown user).
    """
    manifest = read_manifest(bundle)
    # Only the file read is hashed (a bundle's index and weights can be hundreds of MB); a
    # bundle without profiles is refused by ProfileStore.open, naming the problem.
    if PROFILES_FILE in manifest.get("files", {}):
        verify_checksums(bundle, manifest, names=(PROFILES_FILE,))
    store = ProfileStore.open(bundle, manifest)
    record = store.get(user_id_mapper(manifest)(user_id), shown_id=user_id)
    message = to_profile(user_id, record, str(manifest["model_version"]))
    data: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True)
    return data
