"""The image cache stays bounded (``harness.guest._prune``; ``_image`` rule 5)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from devmodels import UsageError
from harness.guest import ImageBuilder
from harness.guest._prune import mark_used, prune_images

HOUR = 3600.0


def _image(images: Path, name: str, used: float) -> Path:
    entry = images / name
    entry.mkdir(parents=True)
    (entry / "vmlinuz").write_bytes(b"k")
    (entry / "image.json").write_text("{}")
    os.utime(entry / "image.json", (used, used))
    os.utime(entry, (used, used))
    return entry


def test_least_recently_used_beyond_keep_go_when_idle(tmp_path: Path) -> None:
    now = time.time()
    entries = [_image(tmp_path, f"img{i}", now - (i + 2) * HOUR) for i in range(5)]  # img0 newest
    removed = prune_images(tmp_path, keep=2, now=now)
    assert sorted(removed) == sorted(entries[2:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img0", "img1"]


def test_recently_used_images_stay_whatever_keep_says(tmp_path: Path) -> None:
    now = time.time()
    fresh = [_image(tmp_path, f"fresh{i}", now - 60) for i in range(3)]
    old = _image(tmp_path, "old", now - 5 * HOUR)
    assert prune_images(tmp_path, keep=0, now=now) == [old]
    assert all(entry.exists() for entry in fresh)


def test_a_hit_marks_use_and_saves_an_image(tmp_path: Path) -> None:
    now = time.time()
    a = _image(tmp_path, "a", now - 3 * HOUR)
    b = _image(tmp_path, "b", now - 2 * HOUR)
    mark_used(a)  # a is found in the cache again: now the most recent
    prune_images(tmp_path, keep=1, min_idle=HOUR, now=time.time() + 2 * HOUR)
    assert a.exists() and not b.exists()


def test_stale_build_and_trash_directories_are_cleaned(tmp_path: Path) -> None:
    now = time.time()
    stale = _image(tmp_path, ".build-x1", now - 2 * HOUR)
    live = _image(tmp_path, ".build-x2", now - 10)  # another process is writing it
    trash = _image(tmp_path, ".trash-y", now - 10)
    assert prune_images(tmp_path, keep=10, now=now) == []
    assert not stale.exists() and live.exists() and not trash.exists()


def test_missing_directory_and_bad_arguments(tmp_path: Path) -> None:
    assert prune_images(tmp_path / "absent") == []
    with pytest.raises(UsageError):
        prune_images(tmp_path, keep=-1)
    with pytest.raises(UsageError):
        ImageBuilder(keep_images=-1)


def test_building_a_new_image_prunes_old_ones_but_never_itself(fake_kernel: Any, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    images = cache / "images"
    old = [_image(images, f"old{i}", time.time() - 5 * HOUR) for i in range(3)]

    def builder(script: str, keep: int | None) -> ImageBuilder:
        b = ImageBuilder(kernel=fake_kernel.kernel, modules_dir=fake_kernel.modules, modules=("alpha",),
                         optional_modules=(), cache_dir=cache, keep_images=keep)
        b.set_test_script(script)
        return b

    first = builder("check one true\n", None).build(progress=False)
    assert all(entry.exists() for entry in old)  # keep_images=None never prunes
    second = builder("check two true\n", 1).build(progress=False)
    assert first.kernel.exists() and second.kernel.exists()  # both used within the hour
    assert not any(entry.exists() for entry in old)
    assert builder("check one true\n", 1).build(progress=False).from_cache
