"""version_data: track data/raw with DVC and push it, giving the data version.

The data version is DVC's own content hash of data/raw (the `md5` in data/raw.dvc),
so `dvc checkout` / `dvc pull` of that .dvc file restores exactly those bytes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneops.errors import ExternalToolError


@dataclass(frozen=True)
class DataVersion:
    version: str  # DVC's md5 of data/raw (".dir" suffix stripped), or "untracked-<sha256>"
    dvc_file: Path | None
    pushed: bool
    remote: str | None


# DVC ends every failure with this line; it says nothing about the cause.
SUPPORT_BANNER = "Having any troubles?"


def run_dvc(root: Path, *args: str) -> str:
    """Run the real `dvc` CLI in `root`; raise ExternalToolError with the cause on failure.

    Not with `--quiet`: it hides DVC's `ERROR:` lines and leaves only the support banner.
    """
    command = [sys.executable, "-m", "dvc", *args]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ExternalToolError(
            f"`dvc {' '.join(args)}` failed in {root}: "
            f"{dvc_cause(done.stderr or done.stdout, done.returncode)}"
        )
    return done.stdout


def dvc_cause(output: str, returncode: int) -> str:
    """DVC's `ERROR:` lines, else its last three other lines; never the support banner."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    kept = errors or [line for line in lines if not line.startswith(SUPPORT_BANNER)][-3:]
    return " | ".join(kept) or f"exit code {returncode} and no message"


def default_remote(root: Path) -> str | None:
    """The name of the DVC default remote, if one is configured."""
    try:
        return run_dvc(root, "remote", "default").strip() or None
    except ExternalToolError:
        return None


def version_data(
    root: Path, data_raw: Path, push: bool = True, require_remote: bool = False
) -> DataVersion:
    """`dvc add` data/raw (a no-op when unchanged) and `dvc push` it to the default remote.

    Outside a DVC repository the version is a sha256 of the files, marked "untracked-".
    `require_remote`: a DVC repository without a default remote is an error (an ingested
    batch must be pushed, or its data version could never be pulled again).
    """
    if not (root / ".dvc").is_dir():
        return DataVersion(f"untracked-{_tree_sha256(data_raw)}", None, False, None)
    remote = default_remote(root)
    if push and require_remote and remote is None:
        raise ExternalToolError(
            f"{root}: no DVC default remote, so the new data version could not be pushed; "
            f"expected one (`dvc remote add -d NAME URL`)"
        )
    target = data_raw.relative_to(root)
    run_dvc(root, "add", str(target))
    dvc_file = data_raw.with_name(data_raw.name + ".dvc")
    if push and remote:
        run_dvc(root, "push", str(dvc_file.relative_to(root)))
    return DataVersion(read_dvc_md5(dvc_file), dvc_file, bool(push and remote), remote)


def read_dvc_md5(dvc_file: Path) -> str:
    outs = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))["outs"]
    return str(outs[0]["md5"]).removesuffix(".dir")


def _tree_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:32]
