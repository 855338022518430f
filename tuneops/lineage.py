"""What a model version must record to be traced to, and rebuilt from, its inputs."""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LIBRARIES = (
    "torch",
    "transformers",
    "datasets",
    "scikit-learn",
    "onnx",
    "onnxruntime",
    "mlflow",
    "prefect",
    "dvc",
    "great-expectations",
    "tuneops",
)


def git_commit(root: Path) -> str:
    """HEAD's sha, with "-dirty" when tracked files differ from it; "unknown" outside git."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions
