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



#: Private names of other code a module may still read, and why.
PRIVATE_READS_ALLOWED = {
    "argparse._SubParsersAction",  # the only way to reach subparsers (stdlib, stable since 3.2)
    "os._exit",  # public despite its name: the console script's exit without teardown
}


def test_no_module_reaches_into_private_names_of_other_code() -> None:
    """``x._name`` (x not ``self``/``cls``) only for names the same module defines; the
    dependencies' internals the bridge relies on are read in ``_bridge/compat.py`` alone."""
    import ast
    from pathlib import Path

    root = Path(memoh_trio.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] == "_proto" or rel.as_posix() == "_bridge/compat.py":
            continue
        tree = ast.parse(path.read_text())
        own: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}:
                continue
            text = ast.unparse(node)
            if node.attr not in own and text not in PRIVATE_READS_ALLOWED:
                offenders.append(f"{rel}:{node.lineno}: {text}")
    assert offenders == []
