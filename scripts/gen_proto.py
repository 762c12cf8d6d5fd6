#!/usr/bin/env python3
"""Regenerate the betterproto2 stubs in ``src/memoh_trio/_proto`` from ``proto/``.

    python scripts/gen_proto.py           # rewrite the committed stubs
    python scripts/gen_proto.py --check   # exit 1 if the committed stubs drifted

Needs the ``dev`` extra (grpcio-tools and betterproto2-compiler, pinned in pyproject.toml so
that the output is reproducible). Nobody edits ``_proto/`` by hand: change the .proto and rerun.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "src" / "memoh_trio" / "_proto"
PLUGIN_OPTS = "client_generation=async,server_generation=async"


def generate(dest: Path) -> None:
    plugin = Path(sys.executable).parent / "protoc-gen-python_betterproto2"
    if not plugin.exists():
        found = shutil.which("protoc-gen-python_betterproto2")
        if found is None:
            raise SystemExit("protoc-gen-python_betterproto2 not found: install the 'dev' extra")
        plugin = Path(found)
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("*.proto"))
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--plugin=protoc-gen-python_betterproto2={plugin}",
        f"--python_betterproto2_out={dest}",
        f"--python_betterproto2_opt={PLUGIN_OPTS}",
        *protos,
    ]
    # The compiler formats its output with `ruff` (pinned in the dev extra): find it beside python.
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    done = subprocess.run(cmd, cwd=PROTO_DIR, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"protoc failed:\n{done.stderr}")


def tree(path: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(path)): p
        for p in sorted(path.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def drift(expected: Path, actual: Path) -> list[str]:
    """Return the relative paths that differ between two generated trees."""
    want, have = tree(expected), tree(actual)
    diffs = sorted(set(want) ^ set(have))
    diffs += [k for k in sorted(set(want) & set(have)) if not filecmp.cmp(want[k], have[k], False)]
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs drifted")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        if args.check:
            diffs = drift(fresh, OUT_DIR)
            if diffs:
                print("generated stubs drifted from proto/: " + ", ".join(diffs), file=sys.stderr)
                print("run: python scripts/gen_proto.py", file=sys.stderr)
                return 1
            print("stubs up to date")
            return 0
        if OUT_DIR.exists():
            shutil.rmtree(OUT_DIR)
        shutil.copytree(fresh, OUT_DIR)
        print(f"wrote {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
