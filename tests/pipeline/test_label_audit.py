"""The label audit (pipeline/label_audit.py) on the bundled movie snippets: labels flipped
on purpose are found far above chance; drop removes exactly the flagged train rows."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import hypergeom

from pipeline import label_audit
from pipeline.fetch_data import fetch_data
from pipeline.prepare import SPLITS, prepare
from tests.conftest import SLICE_ROWS, TEXT, store_client, write_params
from tuneops.config import DataConfig, PrepareConfig
from tuneops.errors import DataValidationError

# A larger slice than SLICE_ROWS: TF-IDF needs some rows to tell flipped labels from hard
# texts (1,600 train rows; the audit takes seconds).
AUDIT_ROWS = 5 * SLICE_ROWS
FLIP_SHARE = 0.05
LABELS = ("negative", "positive")
OTHER = {"negative": "positive", "positive": "negative"}


@dataclass
class Flipped:
    raw: Path  # the dataset folder, with the flipped labels
    data: DataConfig
    flipped: set[str]  # file:row of every flipped train row
    prepared: dict[str, Path]  # prepare.label_issues -> prepared dir
    reports: dict[str, Path]  # prepare.label_issues -> reports dir


def flip_train_labels(dataset_dir: Path, data: DataConfig, out: Path, seed: int) -> set[str]:
    """Flip FLIP_SHARE of the train rows' labels in the raw CSV (rows chosen by `seed`
    among the train rows of an unaudited prepare); their file:row."""
    clean = prepare(TEXT, data, PrepareConfig(label_issues="off"), LABELS, dataset_dir, out)
    train = pd.read_parquet(clean.prepared_dir / "train.parquet")
    n = round(FLIP_SHARE * len(train))
    chosen = np.random.default_rng(seed).choice(len(train), size=n, replace=False)
    sources = set(train["source"].iloc[chosen])
    path = dataset_dir / "batch-0000.csv"
    raw = pd.read_csv(path, keep_default_na=False)
    rows = [int(source.split(":")[1]) - 1 for source in sources]  # file:row is 1-based
    column = data.label_column
    raw.loc[rows, column] = raw.loc[rows, column].map(OTHER)
    raw.to_csv(path, index=False)
    return sources


@pytest.fixture(scope="module")
def flipped(tmp_path_factory: pytest.TempPathFactory) -> Flipped:
    root = tmp_path_factory.mktemp("label-audit")
    data = DataConfig(max_rows=AUDIT_ROWS)
    fetched = fetch_data(data, root / "raw")
    flips = flip_train_labels(fetched.dataset_dir, data, root / "clean", seed=7)
    prepared, reports = {}, {}
    for setting in ("off", "report", "drop"):
        prepared[setting], reports[setting] = root / f"p-{setting}", root / f"r-{setting}"
        prepare(
            TEXT,
            data,
            PrepareConfig(label_issues=setting),
            LABELS,
            fetched.dataset_dir,
            prepared[setting],
            seed=42,
            reports_dir=reports[setting],
        )
    # every flipped row is still a train row (a flip changes no hash, and makes no conflict)
    train = set(pd.read_parquet(prepared["off"] / "train.parquet")["source"])
    assert flips <= train
    return Flipped(fetched.dataset_dir, data, flips, prepared, reports)


def report_of(reports_dir: Path) -> dict:
    return json.loads((reports_dir / "label_issues.json").read_text(encoding="utf-8"))


def test_flipped_labels_are_flagged_far_above_chance(flipped: Flipped) -> None:
    report = report_of(flipped.reports["report"])
    flagged = {issue["source"] for issue in report["issues"]}
    audited = report["rows_audited"]
    assert audited == len(pd.read_parquet(flipped.prepared["off"] / "train.parquet"))
    assert report["flagged"] == len(flagged)
    caught = len(flagged & flipped.flipped)
    recall = caught / len(flipped.flipped)
    # Flagging as many train rows at random finds this share of the flips (in expectation);
    # the flips it catches are hypergeometric: the chance of catching `caught` or more.
    chance = len(flagged) / audited
    p_value = hypergeom.sf(caught - 1, audited, len(flipped.flipped), len(flagged))
    assert recall >= 0.5, (recall, chance)
    assert recall >= 2 * chance, (recall, chance)
    assert p_value < 1e-6, (caught, len(flagged), p_value)


def test_report_changes_no_split_and_drop_removes_exactly_the_flagged_train_rows(
    flipped: Flipped,
) -> None:
    off, report, drop = (flipped.prepared[s] for s in ("off", "report", "drop"))
    for split in SPLITS:
        assert (report / f"{split}.parquet").read_bytes() == (off / f"{split}.parquet").read_bytes()
    for split in ("validation", "test"):
        assert (drop / f"{split}.parquet").read_bytes() == (off / f"{split}.parquet").read_bytes()
    flagged = [issue["source"] for issue in report_of(flipped.reports["drop"])["issues"]]
    assert flagged  # the audit flagged rows, so drop had something to remove
    before = pd.read_parquet(off / "train.parquet")
    after = pd.read_parquet(drop / "train.parquet")
    assert len(after) == len(before) - len(flagged)
    assert set(before["source"]) - set(after["source"]) == set(flagged)
    manifest = json.loads((drop / "manifest.json").read_text(encoding="utf-8"))
    assert [row["source"] for row in manifest["label_issues_dropped"]] == flagged
    assert manifest["label_issues"]["dropped"] == len(flagged)
    assert manifest["rows"]["train"] == len(after)
    assert sum(manifest["label_counts"]["train"].values()) == len(after)
    kept = json.loads((off / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["fingerprint"] != kept["fingerprint"]  # what trains differs
    # the same audit under report and drop: the same rows flagged
    assert flagged == [i["source"] for i in report_of(flipped.reports["report"])["issues"]]
    reported = json.loads((report / "manifest.json").read_text(encoding="utf-8"))
    assert reported["label_issues_dropped"] == []
    assert reported["fingerprint"] == kept["fingerprint"]


def test_off_audits_nothing(flipped: Flipped) -> None:
    report = report_of(flipped.reports["off"])
    assert (report["audited"], report["issues"], report["reason"]) == (
        False,
        [],
        "prepare.label_issues: off",
    )
    assert label_audit.metrics(report) == {}


def test_the_reports_name_file_row_and_the_users_own_columns(
    flipped: Flipped, tmp_path: Path
) -> None:
    raw = tmp_path / "raw" / "reviews"
    raw.mkdir(parents=True)
    frame = pd.read_csv(flipped.raw / "batch-0000.csv", keep_default_na=False)
    frame.rename(columns={"text": "review", "label": "sentiment"}).to_csv(
        raw / "reviews.csv", index=False
    )
    data = DataConfig(
        source="files",
        name="reviews",
        text_column="review",
        label_column="sentiment",
        max_rows=SLICE_ROWS,
    )
    prepare(TEXT, data, PrepareConfig(), LABELS, raw, tmp_path / "p", reports_dir=tmp_path / "r")
    report = report_of(tmp_path / "r")
    assert (report["text_column"], report["label_column"]) == ("review", "sentiment")
    first = report["issues"][0]
    assert set(first) == {"source", "sentiment", "suggested", "label_quality", "review"}
    assert re.fullmatch(r"reviews\.csv:\d+", first["source"])
    row = int(first["source"].split(":")[1]) - 1  # the user's own file and row
    assert frame.at[row, "label"] == first["sentiment"]
    assert " ".join(frame.at[row, "text"].split()) == first["review"]
    markdown = (tmp_path / "r" / "label_issues.md").read_text(encoding="utf-8")
    assert "| source | sentiment | suggested | label quality | review |" in markdown
    assert f"| {first['source']} | {first['sentiment']} | {first['suggested']} |" in markdown
    assert markdown.count("| reviews.csv:") == report["flagged"]
    # texts are cut in the .md, whole in the .json
    longest = max(report["issues"], key=lambda issue: len(issue["review"]))
    assert len(longest["review"]) > label_audit.MD_TEXT_CHARS
    assert longest["review"] not in markdown
    assert longest["review"][: label_audit.MD_TEXT_CHARS] + "..." in markdown


def few_rows(folder: Path) -> Path:
    """Plenty of negative rows, and only four rows labelled positive."""
    folder.mkdir(parents=True)
    rows = [(f"a dull film number {i}", "negative") for i in range(60)]
    rows += [(f"a great film number {i}", "positive") for i in range(4)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(folder / "b.csv", index=False)
    return folder


def test_drop_refuses_a_label_with_fewer_train_rows_than_folds(tmp_path: Path) -> None:
    raw = few_rows(tmp_path / "raw")
    with pytest.raises(DataValidationError, match=r"prepare\.label_issues: drop") as error:
        prepare(TEXT, DataConfig(), PrepareConfig(label_issues="drop"), LABELS, raw, tmp_path / "p")
    assert "label 'positive' has" in str(error.value)
    assert "set it to report or off" in str(error.value)
    assert not (tmp_path / "p").exists()


def test_report_skips_the_audit_when_a_label_has_too_few_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = few_rows(tmp_path / "raw")
    prepare(TEXT, DataConfig(), PrepareConfig(), LABELS, raw, tmp_path / "p", reports_dir=tmp_path)
    report = report_of(tmp_path)
    assert report["audited"] is False
    assert "needs 5 train rows of every label" in report["reason"]
    assert report["reason"] + "; not audited" in capsys.readouterr().out


def test_token_classification_is_not_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline import tasks

    atis = DataConfig(
        source="slot-filling-atis",
        name="atis",
        text_column="tokens",
        label_column="tags",
        hold_back_rows=0,
        max_rows=SLICE_ROWS,
    )
    fetched = fetch_data(atis, tmp_path / "raw")
    labels = tuple(json.loads((fetched.dataset_dir / "labels.json").read_text()))
    token = tasks.get("token-classification")
    prepare(
        token, atis, PrepareConfig(), labels, fetched.dataset_dir, tmp_path / "p",
        reports_dir=tmp_path / "r",
    )  # fmt: skip
    reason = "the label audit does not apply to token-classification"
    assert f"prepare.label_issues: report: {reason}; skipped" in capsys.readouterr().out
    assert report_of(tmp_path / "r")["reason"] == reason
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["label_issues"]["audited"] is False


def test_the_run_logs_the_reports_and_counts(flipped: Flipped, tmp_path: Path) -> None:
    from tuneops import stages
    from tuneops.tracking import MlflowTracker

    write_params(tmp_path, {})
    ctx = stages.load_context(tmp_path)
    ctx.paths.reports.mkdir(parents=True)
    for suffix in (".json", ".md"):
        name = f"label_issues{suffix}"
        (ctx.paths.reports / name).write_bytes((flipped.reports["report"] / name).read_bytes())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker.start(uri, "tests", (tmp_path / "artifacts").as_uri(), "run", {})
    stages.log_label_issues(ctx, tracker)
    tracker.end()
    client = store_client(uri)
    run = client.get_run(tracker.run_id)
    report = report_of(flipped.reports["report"])
    assert run.data.metrics["label_issues.flagged"] == report["flagged"]
    assert run.data.metrics["label_issues.rows_audited"] == report["rows_audited"]
    assert run.data.metrics["label_issues.dropped"] == 0
    logged = {a.path for a in client.list_artifacts(tracker.run_id, "reports")}
    assert logged == {"reports/label_issues.json", "reports/label_issues.md"}
