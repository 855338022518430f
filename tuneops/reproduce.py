"""`tuneops reproduce VERSION`: rebuild a registered version from what it recorded.

The version's tags name its data version (DVC's hash of data/raw) and prepared-data
fingerprint; its MLflow run holds the resolved params (params/params.yaml) and metrics.
The data is pulled **from the DVC remote** into a scratch workspace with its own DVC
cache (so a version that only ever lived in someone's local cache is reported, not
silently found), then validate → prepare → train → evaluate run there with the recorded params,
tracked in the workspace's own MLflow store, and the results are set next to the
recorded ones. The code is the current checkout; the recorded commit is shown beside it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.version_data import default_remote, run_dvc
from tuneops import stages
from tuneops.config import load_params
from tuneops.errors import ConfigError, ExternalToolError
from tuneops.lineage import git_commit, library_versions
from tuneops.paths import Paths
from tuneops.tracking import store_client

# Metrics compared with the recorded run; on CPU they must match to this tolerance.
CPU_TOLERANCE = 1e-9


@dataclass
class Reproduction:
    version: str
    workspace: Path
    data_version: str
    recorded_fingerprint: str
    fingerprint: str
    recorded_commit: str
    current_commit: str
    device: str
    metrics: dict[str, tuple[float, float]]  # name -> (recorded, reproduced)
    tolerance: float
    recorded_libraries: dict[str, str]  # the training run's lib.* tags, "lib." dropped
    current_libraries: dict[str, str]  # lineage.library_versions() here

    @property
    def recorded_dirty(self) -> bool:
        """The version was trained with uncommitted code or params: no commit holds them."""
        return self.recorded_commit.endswith("-dirty")

    @property
    def libraries_that_differ(self) -> list[str]:
        return [
            name for name, (recorded, current) in self._libraries().items() if recorded != current
        ]

    def _libraries(self) -> dict[str, tuple[str, str]]:
        """name -> (recorded, current), in the order library_versions() lists them."""
        names = list(self.current_libraries) + sorted(
            set(self.recorded_libraries) - set(self.current_libraries)
        )
        return {
            name: (
                self.recorded_libraries.get(name, "not recorded"),
                self.current_libraries.get(name, "absent"),
            )
            for name in names
        }

    @property
    def same_data(self) -> bool:
        return self.fingerprint == self.recorded_fingerprint

    @property
    def same_metrics(self) -> bool:
        """Every compared metric within the tolerance; a comparison of nothing is a failure."""
        return bool(self.metrics) and all(
            abs(a - b) <= self.tolerance for a, b in self.metrics.values()
        )

    def _commit_mark(self) -> str:
        if self.recorded_dirty:
            return "  DIRTY"
        return "" if self.recorded_commit == self.current_commit else "  DIFFERENT"

    def table(self) -> str:
        lines = [
            f"reproduced v{self.version} in {self.workspace} on {self.device}",
            f"{'':28} {'recorded':>34} {'reproduced':>34}",
            f"{'data version':28} {self.data_version:>34} {self.data_version:>34}",
            f"{'prepared fingerprint':28} {self.recorded_fingerprint[:32]:>34} "
            f"{self.fingerprint[:32]:>34}{'' if self.same_data else '  DIFFERENT'}",
            f"{'git commit':28} {_short(self.recorded_commit):>34} "
            f"{_short(self.current_commit):>34}{self._commit_mark()}",
        ]
        for name, (recorded, reproduced) in self.metrics.items():
            mark = "" if abs(recorded - reproduced) <= self.tolerance else "  DIFFERENT"
            lines.append(f"{name:28} {recorded:>34.6f} {reproduced:>34.6f}{mark}")
        if not self.metrics:
            lines.append("no metric recorded on the run matches the task's reproduce_metrics")
        if self.recorded_libraries:
            for name, (was, now) in self._libraries().items():
                mark = "" if was == now else "  DIFFERENT"
                lines.append(f"{'lib.' + name:28} {was[:34]:>34} {now[:34]:>34}{mark}")
        else:
            lines.append("no library versions (lib.* tags) recorded on the run")
        if self.recorded_dirty:
            lines.append(
                "the recorded commit is -dirty: it was trained with uncommitted code or params, "
                "so no commit holds the code it ran"
            )
        if self.recorded_libraries and self.libraries_that_differ:
            lines.append(
                f"libraries differ from the recorded run: {', '.join(self.libraries_that_differ)}"
                " (CPU results are bit-exact only with the recorded versions)"
            )
        verdict = "identical" if self.same_data and self.same_metrics else "NOT reproduced"
        lines.append(f"result: {verdict} (metric tolerance {self.tolerance:g})")
        return "\n".join(lines)


def _short(commit: str) -> str:
    """A sha cut to 12 hex digits, keeping its "-dirty" (a full sha does not fit a column)."""
    sha, dirty, _ = commit.partition("-dirty")
    return sha[:12] + dirty


def reproduce(
    ctx: stages.Context, version: str, workspace: Path | None = None, gpu_tolerance: float = 0.01
) -> Reproduction:
    """Pull v`version`'s data from the DVC remote, retrain with its params, compare.

    `workspace` (default: a new temporary folder) must not exist or be empty."""
    from mlflow.exceptions import MlflowException

    name = ctx.params.registry.model_name
    client = store_client(ctx.tracking_uri)
    try:
        model_version = client.get_model_version(name, version)
    except MlflowException as exc:
        raise ConfigError(f"{name}: no version {version!r} in the registry") from exc
    tags = model_version.tags
    if not model_version.run_id or "data.version" not in tags:
        raise ConfigError(f"{name} v{version}: no training run or data.version tag to rebuild from")
    run = client.get_run(model_version.run_id)
    params_text = _recorded_params(ctx.tracking_uri, run.info.run_id, version)

    if workspace is None:
        workspace = Path(tempfile.mkdtemp(prefix=f"tuneops-reproduce-v{version}-"))
    elif workspace.exists() and any(workspace.iterdir()):
        raise ConfigError(f"{workspace}: the reproduction workspace must be new or empty")
    (workspace / "data").mkdir(parents=True, exist_ok=True)
    (workspace / "params.yaml").write_text(params_text, encoding="utf-8")
    _pull_data_version(ctx.paths.root, workspace, tags["data.version"], version)

    # The rebuild is tracked in the workspace's own store, never in the team's registry.
    params = load_params(workspace / "params.yaml")
    scratch = stages.Context(params, Paths(workspace), f"sqlite:///{workspace / 'mlflow.db'}")
    stages.step_validate(scratch)
    prepared = stages.step_prepare(scratch)
    trained, _ = stages.step_train(scratch)
    evaluated = stages.step_evaluate(scratch)
    reproduced = evaluated.flat_metrics() | {
        f"best_validation_{k}": v for k, v in trained.best_validation.items()
    }
    recorded = run.data.metrics
    return Reproduction(
        version=version,
        workspace=workspace,
        data_version=tags["data.version"],
        recorded_fingerprint=tags.get("data.fingerprint", "unknown"),
        fingerprint=prepared.fingerprint,
        recorded_commit=tags.get("git.commit", "unknown"),
        current_commit=git_commit(ctx.paths.root, stages.pipeline_owned()),
        device=trained.device,
        metrics={
            key: (float(recorded[key]), float(reproduced[key]))
            for key in scratch.task.reproduce_metrics
            if key in recorded and key in reproduced
        },
        tolerance=CPU_TOLERANCE if trained.device == "cpu" else gpu_tolerance,
        recorded_libraries={
            key.removeprefix("lib."): value
            for key, value in run.data.tags.items()
            if key.startswith("lib.")
        },
        current_libraries=library_versions(),
    )


def _recorded_params(tracking_uri: str, run_id: str, version: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="params/params.yaml", tracking_uri=tracking_uri
        )
    except (MlflowException, OSError) as exc:
        raise ConfigError(
            f"v{version}: its run {run_id} has no params/params.yaml artifact (trained before "
            f"tuneops recorded resolved params); cannot rebuild it"
        ) from exc
    return Path(path).read_text(encoding="utf-8")


def _pull_data_version(root: Path, workspace: Path, data_version: str, version: str) -> None:
    """data/raw at `data_version`, from the project's default DVC remote, into `workspace`.

    The workspace is its own DVC repository (no git, a fresh cache) with the project's
    remotes, so the bytes must come from the remote."""
    if not (root / ".dvc").is_dir():
        raise ConfigError(f"{root}: not a DVC repository; data versions cannot be restored")
    if data_version.startswith("untracked-"):
        raise ConfigError(f"v{version} was trained on untracked data; it cannot be restored")
    run_dvc(workspace, "init", "--no-scm", "--quiet")
    default = default_remote(root)
    if default is None:
        raise ConfigError(f"{root}: no default DVC remote to restore data version from")
    # `dvc config`, not `dvc remote list`: the list is a table that dvc wraps at the
    # terminal width, so a long remote path arrives split over several lines.
    url = run_dvc(root, "config", f"remote.{default}.url").strip()
    if "://" not in url and not Path(url).is_absolute():
        url = str((root / ".dvc" / url).resolve())  # relative to .dvc/config, as dvc reads it
    run_dvc(workspace, "remote", "add", "--default", default, url)
    run_dvc(workspace, "config", "core.analytics", "false")
    dvc_file = {"outs": [{"md5": f"{data_version}.dir", "hash": "md5", "path": "raw"}]}
    (workspace / "data" / "raw.dvc").write_text(yaml.safe_dump(dvc_file), encoding="utf-8")
    try:
        run_dvc(workspace, "pull", "data/raw.dvc")
    except ExternalToolError as exc:
        raise ExternalToolError(
            f"v{version}: data version {data_version} is not in DVC remote {default!r} "
            f"({url}); push it from a clone that has it (`dvc push data/raw.dvc`). dvc: {exc}"
        ) from exc
