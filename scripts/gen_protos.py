"""Regenerate the Python code and typed stubs for protos/ into src/schedkit/v1/.

Run with ``--check`` in CI: it regenerates into a temporary folder and fails on any difference
from what is committed, so stale generated code never lands.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = Path("schedkit") / "v1"
# The mypy-protobuf plugins sit beside this interpreter, found without activating the venv.
BIN = Path(sys.executable).parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out_root: Path) -> list[Path]:
    """Run protoc with the grpc and mypy plugins; return the generated files."""
    sources = sorted((PROTOS / PACKAGE).glob("*.proto"))
    out_root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--mypy_out={out_root}",
            f"--mypy_grpc_out={out_root}",
            *(str(s) for s in sources),
        ],
        check=True,
    )
    return sorted(p for p in (out_root / PACKAGE).iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    """Regenerate in place, or with --check compare against the committed files."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    options = parser.parse_args()
    target = ROOT / "src" / PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        if options.check:
            committed = sorted(p for p in target.iterdir() if p.name.endswith(GENERATED_SUFFIXES))
            stale = [p.name for p in fresh if not filecmp.cmp(p, target / p.name, shallow=False)]
            extra = sorted({p.name for p in committed} - {p.name for p in fresh})
            if stale or extra or len(committed) != len(fresh):
                print(f"generated code is stale: {stale + extra}; run scripts/gen_protos.py")
                return 1
            print(f"generated code is fresh ({len(fresh)} files)")
            return 0
        for path in fresh:
            shutil.copyfile(path, target / path.name)
    print(f"wrote {len(fresh)} files to {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
