"""The committed betterproto2 stubs match what the pinned compiler generates from proto/."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_do_not_drift() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_drift_check_detects_a_hand_edit(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    gen_proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_proto)
    gen_proto.generate(tmp_path)
    assert gen_proto.drift(tmp_path, gen_proto.OUT_DIR) == []
    stub = tmp_path / "mcpcontainer" / "__init__.py"
    stub.write_text(stub.read_text() + "\n# hand edit\n")
    assert gen_proto.drift(tmp_path, gen_proto.OUT_DIR) == ["mcpcontainer/__init__.py"]


def test_wire_contract_method_paths() -> None:
    from memoh_trio._proto.mcpcontainer import ContainerServiceBase

    paths = set(ContainerServiceBase().__mapping__())
    assert paths == {
        f"/mcpcontainer.ContainerService/{rpc}"
        for rpc in ("ReadFile", "WriteFile", "ListDir", "Stat", "Mkdir", "Rename", "Exec",
                    "ReadRaw", "WriteRaw", "DeleteFile")
    }


def test_wire_contract_field_numbers() -> None:
    from memoh_trio._proto.mcpcontainer import WriteRawChunk

    # path=1 (tag 0x0a), data=2 (0x12), abort=3 (0x18): bytes a Go peer would produce.
    encoded = bytes(WriteRawChunk(path="a", data=b"b", abort=True))
    assert encoded == b"\x0a\x01a\x12\x01b\x18\x01"
