"""Generated protobuf code must match protos/: regenerate with scripts/gen_protos.sh."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "visearch" / "v1").glob("*_pb2*.py*"))
    assert generated == committed, "generated files differ: run scripts/gen_protos.sh"
    stale = [
        str(path)
        for path in generated
        if (tmp_path / path).read_bytes() != (ROOT / path).read_bytes()
    ]
    assert not stale, f"stale generated code {stale}: run scripts/gen_protos.sh"
