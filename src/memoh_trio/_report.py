"""The result of one migration, as a plain dataclass with a stable JSON form."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: ``migrated``: copied and renamed (or copied with ``rename=False``);
#: ``already-migrated`` / ``nothing-to-do``: no work was needed (seed semantics);
#: ``dry-run``: walked and classified only; ``incomplete``: some entries failed or the copy was
#: stopped, the source is kept as it was.
Status = Literal["migrated", "already-migrated", "nothing-to-do", "dry-run", "incomplete"]


@dataclass(frozen=True)
class Skipped:
    """An entry deliberately not copied (FIFO, socket, device), with the reason."""

    path: str
    reason: str


@dataclass(frozen=True)
class Failure:
    """An entry that could not be copied, with the error in plain words."""

    path: str
    error: str


@dataclass
class MigrationReport:
    """What one migration did.

    Attributes:
        source: the source directory on the host.
        dest: the destination directory in the container ("" is the server's root).
        status: see :data:`Status`.
        renamed_to: the new name of the source when it was renamed, else ``None``.
        files: regular files copied (empty files created included).
        bytes: bytes copied.
        dirs: empty directories created (directories with entries are created by them and
            not counted).
        symlinks: symlinks recreated.
        unchanged: files not resent because the destination already had them (same size + mtime).
        skipped: entries deliberately not copied, with reasons.
        failures: entries that failed, with the error.
        error: why the source was not renamed, or a fatal error, in plain words (``None`` when
            it was renamed).
        seconds: wall time.
        mtime_precision: how exactly modification times were applied in the container:
            ``"ns"`` (python3 or GNU ``touch``), ``"s"`` (whole seconds: busybox ``touch``
            without python3), ``None`` when none was applied (``preserve=False``, dry run,
            nothing to apply).
        bot_id: the bot (:func:`memoh_trio.migrate_bot` / :func:`memoh_trio.migrate_all`),
            ``None`` for a plain :func:`memoh_trio.migrate`.
        flushed: whether the container flushed the copy to its disk before the rename was
            decided (``sync -f``); ``False`` where it could not be asked (no Exec: the source
            is then kept unless ``rename_without_flush``); ``None`` when no rename was due.
        cause: :func:`memoh_trio.migrate_all` only: ``"unreachable"`` when the bot's container
            could not be reached, does not speak gRPC or the connection was lost,
            ``"refused"`` when it refused our credentials; ``None`` otherwise.
    """

    source: str
    dest: str = ""
    status: Status = "incomplete"
    renamed_to: str | None = None
    files: int = 0
    bytes: int = 0
    dirs: int = 0
    symlinks: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    mtime_precision: Literal["ns", "s"] | None = None
    bot_id: str | None = None
    flushed: bool | None = None
    cause: Literal["unreachable", "refused"] | None = None

    @property
    def ok(self) -> bool:
        """True unless the migration is incomplete (the CLI's exit code 0 vs 1)."""
        return self.status != "incomplete"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``ok`` included; ``bot_id`` first)."""
        d = {"bot_id": self.bot_id, **asdict(self)}
        d["seconds"] = round(self.seconds, 3)
        d["ok"] = self.ok
        return d

    def to_json(self, *, indent: int | None = None) -> str:
        """The report as one JSON document."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)
