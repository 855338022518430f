"""What a model version must record to be traced to, and rebuilt from, its inputs."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Iterable
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


def git_commit(root: Path, owned: Iterable[str] = ()) -> str:
    """HEAD's sha, with "-dirty" when a tracked file differs from it; "unknown" outside git.

    `owned`: paths relative to `root` that the pipeline writes itself (a run rewrites the
    tracked data/raw.dvc and reports/metrics.json); their changes do not count, so "-dirty"
    means the code or params differ. The rest of the repository counts even when `root` is
    a subfolder of it.
    """

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown"
    # ":(top)" is the whole repository; the exclusions are relative to root (git's cwd).
    pathspec = [":(top)", *(f":(exclude,literal){path}" for path in owned)]
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *pathspec).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions
