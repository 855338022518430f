"""A registered version's bundle, opened without running code from the artifact store.

MLflow holds each version as a pyfunc "model from code": `mlflow.pyfunc.load_model` would
execute the logged mlflow_model.py and put the logged copy of tuneops/ first on sys.path,
so anyone who can write artifacts on a shared tracking server could run code in every
process that gates against the champion. Here the version's files are only downloaded,
each bundle file is checked against the sha256 recorded as a version tag when it was
registered, and the bundle is opened with tuneops.runtime (ONNX graphs and a tokenizer
file: data that onnxruntime and tokenizers parse, never code that Python runs).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from tuneops.errors import ModelFileError
from tuneops.runtime import OnnxClassifier, OnnxTokenClassifier, load_bundle
from tuneops.tracking import mlflow_store, store_client

CHECKSUM_TAG = "bundle.sha256."  # + a bundle file's name: its sha256, set at registration


def bundle_checksums(bundle_dir: Path) -> dict[str, str]:
    """The version tags that pin `bundle_dir`: "bundle.sha256.<file>" -> sha256, one per file
    (bundle.json, labels.json, tokenizer.json, each .onnx, the runtime and model card)."""
    return {
        f"{CHECKSUM_TAG}{path.name}": sha256_of(path)
        for path in sorted(bundle_dir.iterdir())
        if path.is_file()
    }


def recorded_checksums(tags: dict[str, str]) -> dict[str, str]:
    """File name -> sha256, from a version's tags ({} for a version registered before
    tuneops recorded them)."""
    return {k.removeprefix(CHECKSUM_TAG): v for k, v in tags.items() if k.startswith(CHECKSUM_TAG)}


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def verify_bundle(bundle_dir: Path, tags: dict[str, str], where: str) -> None:
    """Every file of `bundle_dir` is one recorded in `tags`, with the recorded sha256; raise
    ModelFileError naming the first file that is not (and both hashes)."""
    recorded = recorded_checksums(tags)
    if not recorded:
        raise ModelFileError(
            f"{where}: no bundle checksums recorded (tags {CHECKSUM_TAG}*; registered before "
            "tuneops recorded them), so its files cannot be verified; register it again, or "
            "promote another version by hand with --force"
        )
    found = {path.name: path for path in bundle_dir.iterdir() if path.is_file()}
    for name, expected in sorted(recorded.items()):
        if name not in found:
            raise ModelFileError(
                f"{where}: {name} is missing from the downloaded bundle (sha256 {expected} "
                "recorded at registration)"
            )
        actual = sha256_of(found[name])
        if actual != expected:
            raise ModelFileError(
                f"{where}: {name} has sha256 {actual}, but {expected} was recorded at "
                "registration: the file changed in the artifact store; not opened"
            )
    extra = sorted(set(found) - set(recorded))
    if extra:
        raise ModelFileError(
            f"{where}: {', '.join(extra)} not recorded at registration (recorded: "
            f"{', '.join(sorted(recorded))}): the artifact store's copy was changed; not opened"
        )


def download_bundle(tracking_uri: str, model_name: str, version: str, dst: Path) -> Path:
    """Only the files of a version (never imported or run); returns its bundle folder."""
    import mlflow

    with mlflow_store(tracking_uri):
        local = Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{model_name}/{version}", dst_path=str(dst)
            )
        )
    found = sorted(local.glob("artifacts/*/bundle.json"))
    if len(found) != 1:
        raise ModelFileError(
            f"models:/{model_name}/{version}: expected one ONNX bundle (artifacts/*/bundle.json)"
            f", found {len(found)}"
        )
    return found[0].parent


def open_version(
    tracking_uri: str,
    model_name: str,
    version: str,
    tags: dict[str, str] | None = None,
    model: str = "default",
) -> OnnxClassifier | OnnxTokenClassifier:
    """The runtime bundle of a registered version (`model`: bundle.json's default model, or
    a model file's name), its files checked against the checksums recorded on the version
    (`tags`: the version's, read from the registry when not given)."""
    if tags is None:
        tags = dict(store_client(tracking_uri).get_model_version(model_name, version).tags)
    with tempfile.TemporaryDirectory(prefix="tuneops-version-") as scratch:
        bundle_dir = download_bundle(tracking_uri, model_name, version, Path(scratch))
        verify_bundle(bundle_dir, tags, f"{model_name} v{version}")
        # onnxruntime and tokenizers read their files whole here; the folder can go after.
        return load_bundle(bundle_dir, model=model)
