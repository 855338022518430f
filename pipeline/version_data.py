"""version_data: track data/raw with DVC and push it, giving the data version.

The data version is DVC's own content hash of data/raw (the `md5` in data/raw.dvc),
so `dvc checkout` / `dvc pull` of that .dvc file restores exactly those bytes.
`verified_version` names the version that holds the very files a step read (their md5s,
recorded by prepare), checked against that version's file list in the DVC cache, so a
tag never names data other than what was read; it never runs `dvc add`.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneops.errors import DataValidationError, ExternalToolError


@dataclass(frozen=True)
class DataVersion:
    version: str  # DVC's md5 of data/raw (".dir" suffix stripped), or untracked_version
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
        return DataVersion(untracked_version(file_md5s(data_raw, data_raw)), None, False, None)
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


def file_md5s(folder: Path, base: Path) -> dict[str, str]:
    """{path relative to `base`: md5} of every file under `folder` (DVC 3's file hash is the
    plain md5 of the bytes, so these compare with a DVC version's file list)."""
    return {
        path.relative_to(base).as_posix(): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
    }


def versioned_files(root: Path, version: str) -> dict[str, str] | None:
    """{path relative to data/raw: md5} of DVC version `version` of data/raw, from the DVC
    cache's directory listing (None: the listing is not in the local cache)."""
    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    with Repo(str(root)) as repo:
        try:
            tree = Tree.load(repo.cache.local, HashInfo("md5", f"{version}.dir"))
        except FileNotFoundError:
            return None
        return {"/".join(key): str(info.value) for key, _, info in tree}


def verified_version(root: Path, data_raw: Path, read: dict[str, str]) -> str:
    """The data version that holds exactly the files in `read` ({path relative to
    data/raw: md5}, what a step read), without `dvc add`: in a DVC repository, the md5 in
    data/raw.dvc once its file list holds those files with those bytes, and no other file
    of their dataset folders; outside one, "untracked-" and a sha256 of `read`.
    DataValidationError, naming the files, when data/raw.dvc is missing or holds other data."""
    if not (root / ".dvc").is_dir():
        return untracked_version(read)
    dvc_file = data_raw.with_name(data_raw.name + ".dvc")
    redo = (
        f"version the data first (`tuneops stage version-data`: dvc add + push), then "
        f"prepare again (`tuneops stage prepare`); or restore the versioned files "
        f"(`dvc checkout {dvc_file.relative_to(root)}`) and prepare again"
    )
    if not dvc_file.exists():
        raise DataValidationError(
            f"{dvc_file}: missing, so no data version holds the {len(read)} file(s) that were "
            f"prepared (data/raw is not tracked by DVC); {redo}"
        )
    version = read_dvc_md5(dvc_file)
    held = versioned_files(root, version)
    if held is None:
        raise DataValidationError(
            f"{dvc_file}: version {version}'s file list is not in the local DVC cache, so "
            f"the prepared files cannot be checked against it; `dvc pull` it, or {redo}"
        )
    folders = {path.split("/")[0] + "/" for path in read}
    held = {p: m for p, m in held.items() if any(p.startswith(f) for f in folders)}
    differ = [
        f"{path} ({_what(read.get(path), held.get(path))})"
        for path in sorted(read.keys() | held.keys())
        if read.get(path) != held.get(path)
    ]
    if differ:
        raise DataValidationError(
            f"{dvc_file}: data version {version} does not hold the data that was prepared: "
            f"{', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''}; expected the "
            f"same files with the same bytes (data/raw changed without `dvc add`, or after "
            f"prepare); {redo}"
        )
    return version


def _what(read: str | None, held: str | None) -> str:
    if held is None:
        return "prepared, not in the version"
    if read is None:
        return "in the version, not prepared"
    return f"prepared md5 {read[:8]}, versioned md5 {held[:8]}"


def untracked_version(files: dict[str, str]) -> str:
    """Outside DVC: "untracked-" and a sha256 of {path under data/raw: md5}. version_data
    lists all of data/raw, the lineage the files prepare read: the same version when
    data/raw holds that one dataset."""
    listing = "".join(f"{path}\0{md5}\n" for path, md5 in sorted(files.items()))
    return f"untracked-{hashlib.sha256(listing.encode()).hexdigest()[:32]}"
