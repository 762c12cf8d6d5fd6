"""What the container offers: the probe commands, their parser (:class:`Capabilities`), and the
choice of method and mtime precision for modes and mtimes that follows from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Check = Literal["size", "sha256"]
Precision = Literal["ns", "s"]
MetaMethod = Literal["python", "shell-ns", "shell-s"]

#: The commands the tar path needs.
TAR_COMMANDS = ("tar", "stat", "mv", "mkdir", "rm")
_PROBED_COMMANDS = (*TAR_COMMANDS, "sha256sum", "ln", "chmod", "touch", "sync")
_PROBE_PATH = "./.memoh-probe-absent"  # touch -c never creates it

#: Whether python3 runs (its start-up is most of the probe's time: 60-80 ms behind a pyenv
#: shim, so the migrator asks it in its own Exec, beside the copy, off the critical path).
#: It also prints the interpreter's own path, which the scripts then run directly
#: (:func:`with_python`): behind a pyenv shim (a bash script that runs ``pyenv``) each python3
#: start took 60 ms, 5 ms without it.
PY_PROBE_COMMAND = ("python3 -S -c 'import sys; print(\"python3 ok\"); "
                    "print(\"python3 exe\", sys.executable)' 2>/dev/null; echo probed")
#: The probe without python3 (a few ms): what the copy needs before it starts.
SHELL_PROBE_COMMAND = (
    f"for c in {' '.join(_PROBED_COMMANDS)}; do "
    "command -v \"$c\" >/dev/null 2>&1 && echo \"has $c\"; done; "
    "tar --version 2>/dev/null | grep 'GNU tar' >/dev/null 2>&1 && echo 'tar gnu'; "
    f"touch -c -m -d @1.000000001 -- {_PROBE_PATH} 2>/dev/null && echo 'touch ns'; "
    f"touch -c -m -d @1 -- {_PROBE_PATH} 2>/dev/null && echo 'touch s'; "
    "echo probed"
)
#: One Exec, fixed and small, that reports what the container has (read by :func:`parse_probe`).
PROBE_COMMAND = SHELL_PROBE_COMMAND.removesuffix("echo probed") + PY_PROBE_COMMAND


@dataclass(frozen=True)
class Capabilities:
    """What the container's userland offers (from one :data:`PROBE_COMMAND`)."""

    commands: frozenset[str] = frozenset()
    gnu_tar: bool = False
    touch_ns: bool = False
    touch_s: bool = False
    python3: bool = False
    probed: bool = False  # the probe ran to its end
    python_exe: str = "python3"  # how to run python3: its absolute path when it said so

    def tar_ok(self, check: Check) -> bool:
        """Whether tar batches can run (with ``sha256sum`` for ``check="sha256"``)."""
        need = TAR_COMMANDS + (("sha256sum",) if check == "sha256" else ())
        return self.probed and all(c in self.commands for c in need)

    @property
    def precision(self) -> Precision | None:
        """The mtime precision the container allows (``None``: it cannot set mtimes)."""
        if self.python3 or self.touch_ns:
            return "ns"
        return "s" if self.touch_s else None


def parse_probe(output: bytes) -> Capabilities:
    """Read :data:`PROBE_COMMAND`'s output (nothing is assumed that was not printed)."""
    lines = output.decode("utf-8", "replace").splitlines()
    exe = next((ln[12:] for ln in lines if ln.startswith("python3 exe /")), "python3")
    return Capabilities(python_exe=exe,
        commands=frozenset(ln[4:] for ln in lines if ln.startswith("has ")),
        gnu_tar="tar gnu" in lines, touch_ns="touch ns" in lines, touch_s="touch s" in lines,
        python3="python3 ok" in lines, probed="probed" in lines)


#: Batches of at most this many entries use the shell even where python3 exists (when the
#: shell keeps the same precision): python's start-up (20 ms for /usr/bin/python3 -S, 80+ ms
#: behind a pyenv shim) costs more than a few processes.
SHELL_META_MAX = 8


def meta_method(caps: Capabilities, n: int, *, use_python: bool = True,
                shell_max: int = SHELL_META_MAX) -> MetaMethod:
    """How to apply modes and mtimes to a batch of ``n`` entries (pure): python3 (nanoseconds)
    for large batches or where ``touch`` cannot take nanoseconds, else ``touch -d @S.N``, else
    whole seconds (``touch -d @S``, busybox)."""
    python = use_python and caps.python3
    if python and (n > shell_max or not caps.touch_ns):
        return "python"
    if caps.touch_ns:
        return "shell-ns"
    if python:
        return "python"
    return "shell-s"


def method_precision(method: MetaMethod) -> Precision:
    return "s" if method == "shell-s" else "ns"
