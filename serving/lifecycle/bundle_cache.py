"""Local cache of registered bundles: ``ROOT/<store>/<model name>/<version>/``.

``<store>`` is a short hash of the registry URI, so two registries with the same model
names never share entries. A bundle is downloaded into a temporary sibling folder, its
checksums are verified, and only then is it renamed into place: a reader (another
worker process, a restart) never sees a partial or unverified bundle. A cached bundle is
verified again when it is loaded (:func:`serving.bundle.format.load_bundle`); one that fails is
removed and downloaded again once (:meth:`BundleCache.evict`).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class BundleCache:
    """Bundles of one registry (``registry_uri``) under ``root``. Safe across processes."""

    def __init__(self, root: Path, registry_uri: str) -> None:
        store = hashlib.sha256(registry_uri.encode()).hexdigest()[:12]
        self.root = Path(root) / store

    def path(self, name: str, version: str) -> Path:
        """Where ``models:/name/version`` lives once cached."""
        return self.root / urllib.parse.quote(name, safe="") / version

    def fetch(self, name: str, version: str, download: Callable[[Path], Path]) -> Path:
        """The cached bundle of ``models:/name/version``, downloaded first if missing.

        ``download(folder)`` fills an empty temporary folder and returns the bundle's path
        inside it. The checksums are verified before the bundle is renamed into place;
        raises :class:`~serving.errors.BundleError` (or the download's error) otherwise.
        """
        # Imported here: serving.bundle.format imports torch, which a --workers parent never loads.
        from serving.bundle.format import read_manifest, verify_checksums

        final = self.path(name, version)
        if final.is_dir():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{version}-download-", dir=final.parent) as tmp:
            bundle = download(Path(tmp))
            verify_checksums(bundle, read_manifest(bundle))
            try:
                bundle.rename(final)
            except OSError:
                if not final.is_dir():  # not a concurrent download that won the race
                    raise
                log.info("models:/%s/%s was cached by another process meanwhile", name, version)
        return final

    def evict(self, name: str, version: str) -> None:
        """Remove a cached bundle (it failed verification); the next fetch downloads it again."""
        final = self.path(name, version)
        if not final.is_dir():
            return
        # Rename first: a concurrent reader sees the bundle whole or not at all.
        doomed = final.with_name(f".{version}-evicted-{uuid.uuid4().hex}")
        try:
            final.rename(doomed)
        except OSError:
            return
        shutil.rmtree(doomed, ignore_errors=True)
