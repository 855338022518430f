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
    """Download version/alias `ref` of `model_name` into `out_dir`; returns what was stamped."""
    import mlflow

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
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(found[0].parent, tmp, dirs_exist_ok=True)
            meta = json.loads((tmp / "bundle.json").read_text(encoding="utf-8")) | stamp
            (tmp / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return stamp
