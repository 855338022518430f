"""A prepared slice of the real data and a tiny candidate trained on it, built once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides, write_params
from tuneops.config import Params, load_params
from tuneops.paths import Paths
from tuneops.pipeline.export import ExportResult, export
from tuneops.pipeline.fetch_data import fetch_data
from tuneops.pipeline.prepare import prepare
from tuneops.pipeline.train import TrainResult, train


@dataclass
class Trained:
    params: Params
    paths: Paths
    result: TrainResult


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    params = load_params(write_params(root, tiny_overrides(tiny_model_dir)))
    paths = Paths(root)
    fetched = fetch_data(params.data, paths.data_raw)
    prepare(params.data, params.prepare, fetched.labels, fetched.dataset_dir, paths.data_prepared)
    result = train(
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
    p = trained.params
    return export(
        p.export,
        p.train.max_length,
        trained.paths.candidate,
        trained.paths.data_prepared,
        trained.paths.export,
    )
