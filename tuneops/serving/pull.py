"""`tuneops pull-bundle`: a registered version's ONNX bundle, stamped with where it came from.

The bundle in models/export/ is written before registration, so it cannot know its
version number; the copy pulled from the registry can, and is what a deployment ships.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from tuneops.compare import resolve
from tuneops.errors import ConfigError
from tuneops.paths import atomic_dir
from tuneops.tracking import mlflow_store, store_client

LINEAGE_TAGS = ("data.version", "data.fingerprint", "git.commit", "params.hash", "gate.verdict")


def pull_bundle(tracking_uri: str, model_name: str, ref: str, out_dir: Path) -> dict[str, str]:
    """Download version/alias `ref` of `model_name` into `out_dir`; returns what was stamped.

    `out_dir` is replaced whole, so it must be new, empty, or a bundle pulled before that
    holds only the files that pull wrote (bundle.json's `bundle_files`): a folder with any
    other file is refused, never emptied."""
    import mlflow

    out_dir = out_dir.resolve()
    _check_replaceable(out_dir)
    version = resolve(store_client(tracking_uri), model_name, ref)
    stamp = {
        "registered_model": model_name,
        "model_version": str(version.version),
        "model_uri": f"models:/{model_name}/{version.version}",
    } | {tag: version.tags[tag] for tag in LINEAGE_TAGS if tag in version.tags}
    with tempfile.TemporaryDirectory() as scratch, mlflow_store(tracking_uri):
        local = Path(mlflow.artifacts.download_artifacts(stamp["model_uri"], dst_path=scratch))
        found = sorted(local.glob("artifacts/*/bundle.json"))
        if not found:
            raise ConfigError(f"{stamp['model_uri']}: holds no ONNX bundle (no bundle.json)")
        where = f"{model_name} v{version.version}"
        stamp["bundle_verified"] = _verified(found[0].parent, dict(version.tags), where)
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(found[0].parent, tmp, dirs_exist_ok=True)
            files = sorted(path.name for path in tmp.iterdir())
            meta = json.loads((tmp / "bundle.json").read_text(encoding="utf-8")) | stamp
            meta["bundle_files"] = files
            (tmp / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return stamp


def _verified(bundle_dir: Path, tags: dict[str, str], where: str) -> str:
    """Check the pulled files against the checksums recorded at registration (a changed file
    raises ModelFileError: a deployment would ship, and run, what the gate never judged)."""
    from pipeline.registered import recorded_checksums, verify_bundle

    recorded = recorded_checksums(tags)
    if not recorded:
        return "no checksums recorded (registered before tuneops recorded them)"
    verify_bundle(bundle_dir, tags, where)
    return f"sha256 of {len(recorded)} files as recorded at registration"


def _check_replaceable(out_dir: Path) -> None:
    """Refuse a folder whose replacement would delete files that pull-bundle did not write."""
    if Path.cwd().is_relative_to(out_dir):
        raise ConfigError(
            f"--out {out_dir}: is the current directory (or holds it); the bundle replaces "
            "its folder whole, so pull into a subfolder, e.g. --out ./bundle"
        )
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file, not a folder")
    entries = sorted(path.name for path in out_dir.iterdir())
    if not entries:
        return
    if "bundle.json" not in entries:
        raise ConfigError(
            f"--out {out_dir}: is not empty and is not a tuneops bundle (no bundle.json), and "
            "pull-bundle replaces the folder whole; pass a new or empty folder, e.g. "
            f"--out {out_dir / 'bundle'}"
        )
    try:
        written = json.loads((out_dir / "bundle.json").read_text(encoding="utf-8"))["bundle_files"]
    except (OSError, ValueError, KeyError, TypeError):
        written = []  # not pulled by this version of tuneops: nothing is known to be ours
    foreign = [name for name in entries if name not in written]
    if foreign:
        raise ConfigError(
            f"--out {out_dir}: holds files that pull-bundle did not write ({', '.join(foreign)}), "
            "and it replaces the folder whole; move them out or pass a new or empty folder"
        )
