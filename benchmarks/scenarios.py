"""Benchmark trees: generated once, deterministically, into a cache directory.

Each scenario is a bot tree at ``<cache>/<scenario>/bots/bench`` (the layout the migrator expects:
``DATA_ROOT/bots/<bot_id>``) plus a ``manifest.json`` beside ``bots/`` with the file count and
byte total every contender must reproduce at its destination.

Scenarios (full size / ``--smoke`` size):

- ``a`` 3,000 small files of 100 B-8 KiB in 30 directories / 60 files in 3 directories;
- ``b`` 2 files of 128 MiB / 2 files of 1 MiB;
- ``c`` a mixed bot-like tree (notes, JSON state, logs, media, a database, nested skills) /
  the same shape, 1/50 of the files and bytes;
- ``d`` 100,000 tiny files (16-256 B) in 1,000 directories / 400 files in 4 directories;
- ``e`` one 4 GiB file / one 8 MiB file.

Content is real bytes (every contender reads all of it), generated cheaply: slices of one seeded
random block, so generation is bound by the file system, not by the random number generator. No
tree contains empty files, empty directories or symlinks: the seed's algorithm cannot copy them
(it drops empty files and directories), and every contender must produce the same tree.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Bumped whenever a generator changes, so stale caches are regenerated rather than reused.
GENERATOR_VERSION = 1
# The one random block all content is sliced from (rotated per file so files differ).
_BLOCK_SIZE = 16 * MiB
BOT_ID = "bench"


@dataclass(frozen=True)
class Manifest:
    """What a correct copy of a scenario's tree contains."""

    scenario: str
    smoke: bool
    files: int
    bytes: int


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    # Yields (relative path, size) for every file; the generator fills the content in.
    layout: Callable[[bool], Iterator[tuple[str, int]]]


class _Content:
    """Cheap deterministic content: windows onto one seeded random block."""

    def __init__(self, seed: int) -> None:
        self._block = random.Random(seed).randbytes(_BLOCK_SIZE)
        self._rng = random.Random(seed + 1)

    def write(self, path: Path, size: int) -> None:
        start = self._rng.randrange(_BLOCK_SIZE)
        with open(path, "wb") as f:
            remaining = size
            while remaining:
                n = min(remaining, _BLOCK_SIZE - start)
                f.write(memoryview(self._block)[start : start + n])
                remaining -= n
                start = 0


def _small_files(smoke: bool) -> Iterator[tuple[str, int]]:
    rng = random.Random(1)
    dirs, per_dir = (3, 20) if smoke else (30, 100)
    for d in range(dirs):
        for i in range(per_dir):
            yield f"dir{d:02d}/file{i:04d}.bin", rng.randint(100, 8 * KiB)


def _large_files(smoke: bool) -> Iterator[tuple[str, int]]:
    size = 1 * MiB if smoke else 128 * MiB
    yield "large-0.bin", size
    yield "large-1.bin", size


def _mixed_bot(smoke: bool) -> Iterator[tuple[str, int]]:
    """A bot's data directory: many small notes, some state, logs, media and one database."""
    rng = random.Random(3)
    scale = 50 if smoke else 1

    def count(n: int) -> int:
        return max(1, n // scale)

    def size(lo: int, hi: int) -> int:
        return max(1, rng.randint(lo, hi) // (scale if hi > 64 * KiB else 1))

    for i in range(count(600)):
        yield f"memory/notes/{i // 100:02d}/note-{i:05d}.md", size(200, 6 * KiB)
    for i in range(count(200)):
        yield f"memory/state/session-{i:04d}.json", size(500, 40 * KiB)
    for i in range(count(120)):
        yield f"skills/skill-{i // 10:02d}/lib/part-{i:03d}/main.py", size(300, 12 * KiB)
    for i in range(count(30)):
        yield f"logs/2025-{i % 12 + 1:02d}/run-{i:03d}.log", size(64 * KiB, 2 * MiB)
    for i in range(count(40)):
        yield f"media/images/img-{i:04d}.png", size(50 * KiB, 3 * MiB)
    for i in range(count(4)):
        yield f"media/audio/clip-{i:02d}.ogg", size(2 * MiB, 12 * MiB)
    yield "db/bot.sqlite", 48 * MiB // scale
    yield "config.json", 1500


def _tiny_files(smoke: bool) -> Iterator[tuple[str, int]]:
    rng = random.Random(4)
    dirs, per_dir = (4, 100) if smoke else (1000, 100)
    for d in range(dirs):
        for i in range(per_dir):
            yield f"d{d:04d}/t{i:03d}", rng.randint(16, 256)


def _huge_file(smoke: bool) -> Iterator[tuple[str, int]]:
    yield "huge.bin", 8 * MiB if smoke else 4 * GiB


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("a", "3,000 small files (100 B-8 KiB, 30 dirs)", _small_files),
        Scenario("b", "2 x 128 MiB", _large_files),
        Scenario("c", "mixed bot-like tree", _mixed_bot),
        Scenario("d", "100,000 tiny files", _tiny_files),
        Scenario("e", "one 4 GiB file", _huge_file),
    )
}
SMOKE_TITLES = {
    "a": "60 small files (smoke)",
    "b": "2 x 1 MiB (smoke)",
    "c": "mixed bot-like tree, 1/50 (smoke)",
    "d": "400 tiny files (smoke)",
    "e": "one 8 MiB file (smoke)",
}


def title(key: str, smoke: bool) -> str:
    return SMOKE_TITLES[key] if smoke else SCENARIOS[key].title


def disk_size(key: str, smoke: bool, block: int = 4 * KiB) -> tuple[int, int]:
    """``(files, bytes on disk)`` of one copy of scenario ``key``'s tree: each file and
    directory rounded up to whole ``block``s (pure; what the file system will need)."""
    return layout_disk_size(SCENARIOS[key].layout(smoke), block)


def layout_disk_size(layout: Iterable[tuple[str, int]],
                     block: int = 4 * KiB) -> tuple[int, int]:
    """:func:`disk_size` of any layout of ``(relative path, size)``."""
    files = used = 0
    dirs: set[str] = set()
    for rel, size in layout:
        files += 1
        used += -(-size // block) * block
        parent = rel.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    return files, used + (len(dirs) + 3) * block  # + bots/<id>/ and the root


def scenario_dir(cache: Path, key: str, smoke: bool) -> Path:
    return cache / f"v{GENERATOR_VERSION}" / (f"{key}-smoke" if smoke else key)


def source_tree(cache: Path, key: str, smoke: bool) -> Path:
    """The bot directory contenders copy: ``<scenario dir>/bots/bench``."""
    return scenario_dir(cache, key, smoke) / "bots" / BOT_ID


def restore_source(src: Path) -> None:
    """Undo a contender's final rename (``bench`` -> ``bench.migrated``) so the next run has a
    source again. Also repairs a cache left renamed by an interrupted run."""
    migrated = src.with_name(src.name + ".migrated")
    if migrated.is_dir() and not src.exists():
        migrated.rename(src)


def ensure(cache: Path, key: str, smoke: bool) -> tuple[Path, Manifest]:
    """Generate scenario ``key`` under ``cache`` unless a complete copy is already there.

    Returns the source tree and its manifest.
    """
    sdir = scenario_dir(cache, key, smoke)
    src = source_tree(cache, key, smoke)
    manifest_path = sdir / "manifest.json"
    restore_source(src)
    if manifest_path.exists() and src.is_dir():
        return src, Manifest(**json.loads(manifest_path.read_text()))
    if sdir.exists():
        shutil.rmtree(sdir)  # an incomplete earlier generation
    building = sdir.with_name(sdir.name + ".building")
    if building.exists():
        shutil.rmtree(building)
    tree = building / "bots" / BOT_ID
    content = _Content(seed=ord(key))
    files = total = 0
    made: set[Path] = set()
    for rel, size in SCENARIOS[key].layout(smoke):
        path = tree / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        content.write(path, size)
        files += 1
        total += size
    manifest = Manifest(scenario=key, smoke=smoke, files=files, bytes=total)
    (building / "manifest.json").write_text(json.dumps(manifest.__dict__))
    os.replace(building, sdir)  # complete, or absent: never half a tree under the final name
    return src, manifest


def tree_totals(root: Path) -> tuple[int, int]:
    """(regular files, bytes) under ``root``, symlinks not followed."""
    files = total = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    files += 1
                    total += entry.stat(follow_symlinks=False).st_size
    return files, total


def same_content(a: Path, b: Path) -> list[str]:
    """Relative paths whose content differs between trees ``a`` and ``b`` (or exist on one side)."""
    def listing(root: Path) -> dict[str, Path]:
        return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}

    left, right = listing(a), listing(b)
    bad = sorted(set(left) ^ set(right))
    for rel in sorted(set(left) & set(right)):
        if left[rel].read_bytes() != right[rel].read_bytes():
            bad.append(rel)
    return bad
