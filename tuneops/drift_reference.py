"""What a batch is compared with for drift (pipeline.drift): the champion's train split.

The champion's data version (tag data.version, a DVC version of data/raw) lists the batch
files it was built from (the local DVC cache's directory listing). Batches are immutable and
a row's split is a hash of its text, so the champion's train split is the current prepared
train split's rows read from those files: no checkout, no download. When that cannot be
had (no champion, no prepared data, the listing not in the cache), the reference falls
back to the current prepared train split, then to the dataset's other batches; the
reports name which one was used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.drift import DriftResult, batch_file, compare, split_by_files
from pipeline.io import read_raw
from tuneops.context import Context


@dataclass(frozen=True)
class ChampionData:
    version: str
    data_version: str
    files: set[str]  # this dataset's batch files in that data version


def champion_data(ctx: Context) -> ChampionData | None:
    """The registry champion and the batch files of its data version; None when there is
    no store yet, no champion, or its data version's listing is not in the DVC cache."""
    from pipeline.registry import version_by_alias
    from pipeline.version_data import versioned_files
    from tuneops.tracking import store_client

    uri = ctx.tracking_uri
    if uri.startswith("sqlite:") and not Path(uri.partition(":///")[2]).exists():
        return None  # no store: no champion (and none created by asking)
    mv = version_by_alias(store_client(uri), ctx.params.registry.model_name, "champion")
    version = None if mv is None else mv.tags.get("data.version")
    if mv is None or not version or not (ctx.paths.root / ".dvc").is_dir():
        return None
    listing = versioned_files(ctx.paths.root, version)
    if listing is None:
        return None
    prefix = f"{ctx.params.data.name}/"
    files = {path.removeprefix(prefix) for path in listing if path.startswith(prefix)}
    return ChampionData(str(mv.version), version, files)


def reference_for(
    ctx: Context, champion: ChampionData | None, exclude: Path
) -> tuple[pd.DataFrame, str]:
    """(rows, what they are) to compare a new batch (the file `exclude`) with."""
    prepared = ctx.paths.data_prepared
    if (prepared / "train.parquet").exists():
        if champion is not None:
            reference, _ = split_by_files(prepared, champion.files)
            if len(reference):
                return reference, (
                    f"champion v{champion.version}'s train split (data version "
                    f"{champion.data_version[:12]})"
                )
        return pd.read_parquet(prepared / "train.parquet"), (
            "the current prepared train split (data/prepared/train.parquet; no champion's "
            "train split to be found)"
        )
    data = ctx.params.data
    raw = read_raw(
        ctx.paths.raw_dataset(data.name),
        data.text_column,
        data.label_column,
        encoding=data.encoding,
        delimiter=data.delimiter,
    )
    others = raw[raw["source"].map(batch_file) != exclude.name]
    return others.reset_index(drop=True), (
        f"the other batches of data/raw/{data.name} (not prepared yet)"
    )


def batch_drift(ctx: Context, batch: Path) -> DriftResult:
    """An ingested batch file against the champion's train split (or its fall-backs)."""
    data = ctx.params.data
    rows = read_raw(
        batch.parent,
        data.text_column,
        data.label_column,
        encoding=data.encoding,
        delimiter=data.delimiter,
    )
    rows = rows[rows["source"].map(batch_file) == batch.name]  # read as prepare reads it
    reference, what = reference_for(ctx, champion_data(ctx), batch)
    return compare(rows, reference, ctx.params.retrain.drift_p_value, what, ctx.params.train.seed)


def drift_since_champion(
    ctx: Context, champion: ChampionData, measure: bool = True
) -> tuple[DriftResult | None, int]:
    """The prepared rows new since the champion's data version against its train split
    (None when no row is new, or not `measure`), and how many rows are new."""
    reference, new = split_by_files(ctx.paths.data_prepared, champion.files)
    if not measure or new.empty or reference.empty:
        return None, len(new)
    what = f"champion v{champion.version}'s train split (data version {champion.data_version[:12]})"
    found = compare(new, reference, ctx.params.retrain.drift_p_value, what, ctx.params.train.seed)
    return found, len(new)
