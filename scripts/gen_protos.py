"""Regenerate the gRPC stubs in quota_center/v1 and region_agent/v1 from proto/.

Run `python scripts/gen_protos.py` after editing a .proto file; `--check` exits 1
when the checked-in stubs differ from what the protos generate.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGES = ("quota_center/v1", "region_agent/v1")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    scripts = Path(sysconfig.get_path("scripts"))
    return f"--plugin={name}={scripts / name}"


def generate(out_dir: Path) -> None:
    """Write the stubs of every package under `out_dir`, mirroring the repo layout."""
    include = Path(protoc.__file__).parent / "_proto"
    for package in PACKAGES:
        (out_dir / package).mkdir(parents=True, exist_ok=True)
        sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / package).glob("*.proto"))
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            _plugin("protoc-gen-mypy"),
            _plugin("protoc-gen-mypy_grpc"),
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--mypy_out={out_dir}",
            f"--mypy_grpc_out={out_dir}",
            *sources,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {package}")


def _generated_files(root: Path, package: str) -> set[str]:
    return {p.name for p in (root / package).iterdir() if p.name.endswith(GENERATED_SUFFIXES)}


def differences(tmp: Path) -> list[str]:
    """Paths whose checked-in content differs from a fresh generation in `tmp`."""
    generate(tmp)
    changed = []
    for package in PACKAGES:
        fresh, current = _generated_files(tmp, package), _generated_files(ROOT, package)
        for name in sorted(fresh | current):
            a, b = tmp / package / name, ROOT / package / name
            if not (a.exists() and b.exists() and filecmp.cmp(a, b, shallow=False)):
                changed.append(f"{package}/{name}")
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale stubs")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        if check:
            stale = differences(Path(tmp))
            if stale:
                print("stale generated stubs:", *stale, sep="\n  ")
                sys.exit(1)
            return
        generate(Path(tmp))
        for package in PACKAGES:
            for name in _generated_files(Path(tmp), package):
                shutil.copyfile(Path(tmp) / package / name, ROOT / package / name)


if __name__ == "__main__":
    main()
