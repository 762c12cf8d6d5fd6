"""The records every per-entry script prints, ``O <i>`` (done) or ``F <i> <why>`` (failed), and
their parsers: an entry without a record fails."""

from __future__ import annotations

import re

_RECORD = re.compile(r"^([OF]) (\d+)(?: (.*))?$")
#: Why a staged file failed when its group's ``mv`` failed (or the mover did not find it
#: staged): the per-file way decides.
MOVE_FAILED = "mv failed"
#: How a staged file's failed check begins (the client's, or the python3 mover's).
CHECK_FAILED = "verification failed in the container"
#: Why an entry failed when its script printed nothing for it.
NO_RECORD = "the container printed no record for it (the step did not run)"


def parse_records(output: bytes, n: int) -> dict[int, str | None]:
    """``{index: None (done) or why it failed}`` for indexes ``0..n-1`` from ``O``/``F`` lines.

    An index with no record, or with a failure record, fails; a record for an index out of
    range is ignored. Never accepts a short or missing record.
    """
    seen: dict[int, str | None] = {}
    for line in output.decode("utf-8", "replace").splitlines():
        m = _RECORD.match(line)
        if not m:
            continue
        i = int(m.group(2))
        if i >= n:
            continue
        if m.group(1) == "F":
            seen[i] = (m.group(3) or "").strip() or "failed"
        else:
            seen.setdefault(i, None)
    return {i: seen.get(i, NO_RECORD) for i in range(n)}


def failures(output: bytes, n: int, stderr: bytes = b"") -> dict[int, str]:
    """The failed entries of :func:`parse_records`. When a single entry failed, its reason is
    followed by the first line the container printed on stderr (the tool's own message)."""
    err = next((ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines()
                if ln.strip()), "")
    out = {i: why for i, why in parse_records(output, n).items() if why is not None}
    if len(out) == 1 and err:
        ((i, why),) = out.items()
        if why != NO_RECORD:
            out[i] = f"{why} ({err[:300]})"
    if out and all(why == NO_RECORD for why in out.values()) and err:
        out = {i: f"{why}: {err[:300]}" for i, why in out.items()}
    return out
