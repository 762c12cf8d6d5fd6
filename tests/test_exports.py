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


def test_layout_docstrings_list_every_module() -> None:
    """The package docstring names every module and package of memoh_trio; each package's own
    docstring names its modules (so a new module cannot go unlisted)."""
    import memoh_trio._bridge
    import memoh_trio._migrate

    missing = [info.name for info in pkgutil.iter_modules(memoh_trio.__path__)
               if f"``{info.name}``" not in memoh_trio.__doc__
               and f"``{info.name}/``" not in memoh_trio.__doc__]
    for package, form in ((memoh_trio._migrate, ":mod:`.{}`"), (memoh_trio._bridge, "``{}``")):
        doc = package.__doc__ or ""
        missing += [f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(
            package.__path__) if form.format(info.name) not in doc]
    assert missing == []
