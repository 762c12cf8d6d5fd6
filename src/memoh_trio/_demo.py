"""``memoh-trio demo``: a real migration of a sample bot tree into an in-process server.

Builds ``DATA_ROOT/bots/demo-bot`` in a temporary directory (small files in nested directories, a
large file, an empty file, an empty directory and a symlink), serves a temporary "container" root
on 127.0.0.1 with :func:`memoh_trio.serve`, runs :func:`memoh_trio.migrate_bot` against it and
checks that the container tree is identical to the source before everything is removed again
(so the report's paths are gone when it is printed: the CLI ends with :data:`DONE_MESSAGE`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import secrets
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from ._client import connect
from ._errors import MemohError
from ._migrate import migrate_bot
from ._progress import Progress
from ._report import MigrationReport
from ._server import serve

DEMO_BOT = "demo-bot"
LARGE_FILE_SIZE = 24 * 1024 * 1024
#: Files of the sample bot beside the ``files`` small ones: config.json, empty.txt, the large one.
EXTRA_FILES = 3


def build_sample_bot(root: Path, *, files: int, seed: int = 7) -> None:
    """Create a bot-like tree under ``root`` (deterministic for a given seed)."""
    rnd = random.Random(seed)
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"name": "demo-bot", "model": "example"}\n')
    (root / "empty.txt").touch()
    (root / "cache" / "empty-dir").mkdir(parents=True)
    (root / "latest-memory").symlink_to("memory/day-0000.md")
    dirs = ["memory", "media/images", "skills/search", "skills/notes", "logs"]
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(files):
        d = dirs[i % len(dirs)]
        size = rnd.randint(100, 8 * 1024)
        name = f"day-{i:04d}.md" if d == "memory" else f"item-{i:04d}.bin"
        (root / d / name).write_bytes(rnd.randbytes(size))
    (root / "media" / "video.bin").write_bytes(rnd.randbytes(LARGE_FILE_SIZE))
    os.chmod(root / "config.json", 0o600)


def tree_digest(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Map every entry under ``root`` to (kind, content or link target) for comparison."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", p.read_bytes())
    return out


@contextlib.asynccontextmanager
async def _maybe_progress(progress: Progress, show: bool) -> AsyncIterator[None]:
    if not show:
        yield
        return
    from ._display import live_progress

    async with live_progress(progress):
        yield


async def run_demo(*, files: int = 400, show_progress: bool = False) -> MigrationReport:
    """Run the demo migration; raise :class:`MemohError` if the copy is not identical."""
    with tempfile.TemporaryDirectory(prefix="memoh-trio-demo-") as tmp:
        data_root = Path(tmp) / "data"
        container = Path(tmp) / "container"
        container.mkdir()
        source = data_root / "bots" / DEMO_BOT
        build_sample_bot(source, files=files)
        expected = tree_digest(source)
        progress = Progress()
        async with trio.open_nursery() as nursery:
            token = secrets.token_hex(16)  # the demo server is authenticated like any other
            addr = await nursery.start(functools.partial(serve, container, token=token))
            print(f"demo: migrating a sample bot ({files + EXTRA_FILES} files: {files} small "
                  "ones, a large one, a config file and an empty one; an empty directory and a "
                  f"symlink) into a container root served on {addr}", file=sys.stderr,
                  flush=True)
            async with (
                connect(str(addr), token=token) as client,
                _maybe_progress(progress, show_progress),
            ):
                report = await migrate_bot(DEMO_BOT, data_root, client, progress=progress,
                                           verify="sha256")
            nursery.cancel_scope.cancel()
        if report.ok:
            if tree_digest(container) != expected:
                raise MemohError("demo: the container tree differs from the source")
            if not (data_root / "bots" / f"{DEMO_BOT}.migrated").is_dir():
                raise MemohError("demo: the source was not renamed to .migrated")
        return report


#: The demo's last words (the CLI prints them after the report): its paths are gone by then.
DONE_MESSAGE = (f"demo: the container tree is identical to the source, which was renamed to "
                f"{DEMO_BOT}.migrated; both lived in a temporary directory, now removed")
