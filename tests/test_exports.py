"""The public surface: every public name is re-exported once, from a private module, and works."""

import importlib
import pkgutil

import memoh_trio


def test_public_names_come_from_private_modules() -> None:
    public = [n for n in dir(memoh_trio) if not n.startswith("_")]
    assert {"connect", "serve", "migrate", "migrate_bot", "migrate_all", "Pool", "Client",
            "MigrationReport", "MemohError"} <= set(public)
    for name in public:
        obj = getattr(memoh_trio, name)
        module = getattr(obj, "__module__", None)
        if module is not None and isinstance(obj, type | type(memoh_trio.connect)):
            assert module.startswith("memoh_trio._"), (name, module)


def test_each_public_object_exported_once() -> None:
    public = {n: getattr(memoh_trio, n) for n in dir(memoh_trio) if not n.startswith("_")}
    objects = [id(v) for k, v in public.items() if callable(v)]
    assert len(objects) == len(set(objects))


def test_private_modules_import_cleanly() -> None:
    for info in pkgutil.walk_packages(memoh_trio.__path__, "memoh_trio."):
        importlib.import_module(info.name)


def test_layout_lists_every_module() -> None:
    """The layout in the package docstring names every module (the generated stubs aside)."""
    doc = memoh_trio.__doc__ or ""
    layout = doc[doc.index("Layout"):]
    missing = []
    for info in pkgutil.walk_packages(memoh_trio.__path__, "memoh_trio."):
        parts = info.name.split(".")[1:]
        if parts[0] == "_proto" and len(parts) > 1:
            continue
        shown = f"``{parts[-1]}/``" if info.ispkg else f"``{parts[-1]}``"
        if shown not in layout:
            missing.append(info.name)
    assert missing == []


def test_asyncio_stays_in_the_bridge() -> None:
    """Only _bridge/ and the generated _proto/ may import asyncio, grpclib or trio_asyncio."""
    import ast
    from pathlib import Path

    root = Path(memoh_trio.__file__).parent
    banned = {"asyncio", "grpclib", "trio_asyncio"}
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in {"_bridge", "_proto"}:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{rel}: {n}" for n in names if n.split(".")[0] in banned]
    assert offenders == []

