"""betterproto2's ``_version`` module, loaded without ``importlib.metadata``.

Upstream ``betterproto2/_version.py`` (0.10) begins with ``from importlib import metadata`` and
sets ``__version__ = metadata.version("betterproto2")``; its ``check_compiler_version`` compares
that with the version the generated stubs were compiled with, when the stubs are imported.
Importing ``importlib.metadata`` (email, zipfile, csv and the distribution search) is 7-10 ms of
a ~0.15 s start of ``memoh-trio migrate``, and nothing else of ours or of our dependencies needs it.

:func:`install` runs that same file, unchanged, with ``metadata.version("betterproto2")``
answered from the ``Version:`` line of betterproto2's one ``*.dist-info/METADATA`` beside the
package (what ``importlib.metadata`` reads too), and registers the module before
``import betterproto2`` looks for it. Anything unexpected (betterproto2 imported already, not one
dist-info, no version line, a file that imports something else) leaves the normal import to run.
``tests/test_compat.py`` checks that the version equals ``importlib.metadata``'s and that the
compiler check is upstream's own function.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

#: The distribution and the module this replaces the import of.
DIST = "betterproto2"
MODULE = "betterproto2._version"


def dist_version(site: Path, dist: str = DIST) -> str | None:
    """The ``Version:`` of ``dist``'s only ``<dist>-*.dist-info`` in ``site`` (``None``: not
    exactly one, or no such line)."""
    infos = list(site.glob(f"{dist}-*.dist-info"))
    if len(infos) != 1:
        return None
    try:
        with open(infos[0] / "METADATA", encoding="utf-8") as f:
            for line in f:
                if line.startswith("Version:"):
                    return line.partition(":")[2].strip() or None
                if not line.strip():  # end of the headers
                    return None
    except OSError:
        return None
    return None


class _Metadata:
    """The one function of ``importlib.metadata`` that ``_version.py`` calls."""

    def __init__(self, version: str) -> None:
        self._version = version

    def version(self, name: str) -> str:
        if name != DIST:
            raise LookupError(f"only {DIST}'s version is known here, not {name!r}")
        return self._version


def install() -> bool:
    """Register ``betterproto2._version`` loaded as above; False when the normal import runs."""
    if DIST in sys.modules or MODULE in sys.modules:
        return False
    spec = importlib.machinery.PathFinder.find_spec(DIST)
    if spec is None or not spec.submodule_search_locations:
        return False
    package = Path(next(iter(spec.submodule_search_locations)))
    version = dist_version(package.parent)
    if version is None:
        return False
    source_path = package / "_version.py"
    try:
        source = source_path.read_text(encoding="utf-8")
    except OSError:
        return False
    metadata = _Metadata(version)
    unexpected: list[str] = []

    def import_(name: str, globals_: Any = None, locals_: Any = None,
                fromlist: Any = (), level: int = 0) -> Any:
        if name == "importlib" and level == 0 and tuple(fromlist or ()) == ("metadata",):
            return types.SimpleNamespace(metadata=metadata)
        unexpected.append(name)
        return builtins.__import__(name, globals_, locals_, fromlist, level)

    module = types.ModuleType(MODULE)
    module.__file__ = str(source_path)
    module.__package__ = DIST
    module.__dict__["__builtins__"] = {**builtins.__dict__, "__import__": import_}
    try:
        exec(compile(source, str(source_path), "exec"), module.__dict__)
    except Exception:
        return False
    if unexpected or module.__dict__.get("__version__") != version:
        return False
    sys.modules[MODULE] = module
    return True
