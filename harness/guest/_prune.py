"""Keeping the guest image cache bounded.

Every change to an image's inputs (a test script, a module list, our own ``/init``) makes
a new cache key, so without pruning the cache only grows (about 20–40 MiB an image).

Rules:

1. A cache hit marks its image used: the manifest's mtime is its last use.
2. After a new image is stored, images beyond the ``keep`` most recently used are
   removed, but only those unused for at least ``min_idle`` seconds: an image another
   process has just found (and is about to boot) is never pulled from under it. Build
   directories left by a crashed builder (``.build-*``) that old go too.
3. Removal first renames the directory to a hidden ``.trash-*`` name (atomic: a
   concurrent ``GuestImage.load`` sees the image absent and rebuilds it), then deletes it.
   Any ``OSError`` (another process pruning the same entry, a read-only cache) skips that
   entry: pruning never fails a build.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from devmodels import UsageError

__all__ = ["KEEP_IMAGES", "MIN_IDLE", "mark_used", "prune_images"]

KEEP_IMAGES = 16
MIN_IDLE = 3600.0
_MANIFEST = "image.json"


def mark_used(image_dir: Path) -> None:
    """Rule 1: record a use of the image in ``image_dir`` (best effort)."""
    try:
        os.utime(image_dir / _MANIFEST)
    except OSError:
        pass


def _last_use(entry: Path) -> float | None:
    try:
        return (entry / _MANIFEST).stat().st_mtime
    except OSError:
        try:
            return entry.stat().st_mtime  # half-written or damaged: its own age
        except OSError:
            return None


def prune_images(images_dir: Path, *, keep: int = KEEP_IMAGES, min_idle: float = MIN_IDLE,
                 now: float | None = None) -> list[Path]:
    """Remove what rule 2 says may go; return the image directories removed.

    Raises:
        UsageError: ``keep`` is negative or ``min_idle`` is negative.
    """
    if not isinstance(keep, int) or keep < 0:
        raise UsageError(f"keep must be a non-negative integer, got {keep!r}")
    if min_idle < 0:
        raise UsageError(f"min_idle must be non-negative, got {min_idle!r}")
    now = time.time() if now is None else now
    try:
        entries = [e for e in images_dir.iterdir() if e.is_dir()]
    except OSError:
        return []
    images: list[tuple[float, Path]] = []
    for entry in entries:
        used = _last_use(entry)
        if used is None:
            continue
        if entry.name.startswith(".trash-"):
            _remove(entry)  # a removal another process did not finish
        elif entry.name.startswith(".build-"):
            if now - used >= min_idle:
                _remove(entry)
        else:
            images.append((used, entry))
    images.sort(key=lambda pair: pair[0], reverse=True)
    return [entry for used, entry in images[keep:] if now - used >= min_idle and _remove(entry)]


def _remove(entry: Path) -> bool:
    """Rule 3: rename out of the way, then delete."""
    if entry.name.startswith(".trash-"):
        target = entry
    else:
        try:
            target = Path(tempfile.mkdtemp(prefix=".trash-", dir=entry.parent))
            os.rename(entry, target / entry.name)
        except OSError:
            return False
    shutil.rmtree(target, ignore_errors=True)
    return True
