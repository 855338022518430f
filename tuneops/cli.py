"""`tuneops` command line: run the flow, run one step (a DVC stage), open the UI, predict.

Every TuneopsError becomes one line on stderr and its documented exit code
(see `tuneops.errors` and the README's exit-code table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import yaml

from tuneops import quiet
from tuneops.errors import ConfigError, TuneopsError
from tuneops.serving.commands import add_commands


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    quiet.apply()
    try:
        _refuse_data_parallel(args)
        return int(args.handler(args) or 0)
    except TuneopsError as exc:
        print(f"tuneops: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tuneops: interrupted", file=sys.stderr)
        return 130


def _refuse_data_parallel(args: argparse.Namespace) -> None:
    """Only the train step runs data-parallel: N copies of a whole flow would each
    validate, evaluate and register."""
    from pipeline.training.devices import world_size

    processes = world_size()
    if processes > 1 and (args.command, getattr(args, "name", None)) != ("stage", "train"):
        raise ConfigError(
            f"`tuneops {args.command}` was started as {processes} processes (torchrun or "
            "accelerate launch); only `tuneops stage train` runs data-parallel. Launch that, "
            "then run evaluate, export and register once each (see the README, Scale out)"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneops", description=__doc__)
    _add_common_options(parser, defaults=True)
    # The same options after the command (`tuneops run --set train.epochs=2`); SUPPRESS
    # keeps a subcommand from overwriting values given before it.
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "run", parents=[common], help="run the Prefect training flow end to end"
    ).set_defaults(handler=_run)
    stage = sub.add_parser(
        "stage", parents=[common], help="run one step on its own (what dvc.yaml calls)"
    )
    stage.add_argument("name", help="a stage of tuneops.stages.STAGES (as dvc.yaml names it)")
    stage.set_defaults(handler=_stage)
    sub.add_parser(
        "fetch-data", parents=[common], help="write the bundled dataset to data/raw/"
    ).set_defaults(handler=lambda a: _stage(argparse.Namespace(**vars(a), name="fetch-data")))

    ingest = sub.add_parser(
        "ingest", parents=[common], help="validate a new batch and add it to data/raw/ (DVC)"
    )
    ingest.add_argument(
        "path",
        type=Path,
        help="a CSV, JSONL or Parquet file (token tasks: JSONL tokens/tags or CoNLL)",
    )
    ingest.set_defaults(handler=_ingest)

    sub.add_parser(
        "retrain",
        parents=[common],
        help="run the retraining flow once (trains when the prepared data, build params or "
        "code changed; re-gates on a gate-only change; else skips)",
    ).set_defaults(handler=_retrain)
    schedule = sub.add_parser(
        "schedule",
        parents=[common],
        help="serve the retraining flow as a Prefect deployment on a cron schedule",
    )
    schedule.add_argument("--cron", required=True, help='e.g. "0 3 * * 1" (Mondays 03:00)')
    schedule.add_argument("--name", default="weekly-retrain", help="deployment name")
    schedule.set_defaults(handler=_schedule)
    deploy = sub.add_parser(
        "deploy",
        parents=[common],
        help="register the retraining flow with a Prefect work pool (its workers run it)",
    )
    deploy.add_argument("--pool", required=True, help="work pool name (process, docker, ...)")
    deploy.add_argument("--name", default="retrain", help="deployment name")
    deploy.add_argument("--cron", default=None, help="optional schedule, e.g. '0 3 * * 1'")
    deploy.add_argument("--image", default=None, help="Docker/Kubernetes pools: an image")
    deploy.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in each flow run's environment, e.g. MLFLOW_TRACKING_URI=http://mlflow:5000",
    )
    deploy.set_defaults(handler=_deploy)

    again = sub.add_parser(
        "reproduce",
        parents=[common],
        help="rebuild a registered version from its recorded data version and params",
    )
    again.add_argument("version")
    again.add_argument("--workspace", type=Path, default=None, help="default: a temp folder")
    again.set_defaults(handler=_reproduce)

    ui = sub.add_parser(
        "ui", parents=[common], help="open the MLflow UI on the project's tracking store"
    )
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1")
    ui.set_defaults(handler=_ui)

    promote = sub.add_parser(
        "promote", parents=[common], help="move champion to a version (gated unless --force)"
    )
    promote.add_argument("version")
    promote.add_argument("--reason", required=True)
    promote.add_argument("--force", action="store_true", help="skip the gate (recorded)")
    promote.set_defaults(handler=_promote)
    rollback = sub.add_parser("rollback", parents=[common], help="swap champion and previous")
    rollback.add_argument("--reason", required=True)
    rollback.set_defaults(handler=_rollback)
    compare = sub.add_parser("compare", parents=[common], help="two versions side by side")
    compare.add_argument("a", nargs="?", default="champion", help="version or alias")
    compare.add_argument("b", nargs="?", default="challenger", help="version or alias")
    compare.set_defaults(handler=_compare)

    tune = sub.add_parser(
        "tune",
        parents=[common],
        help="Optuna search over tune.space (validation split only); resumable, parallel-safe",
    )
    tune.add_argument("--trials", type=int, required=True, help="trials to run in this process")
    tune.set_defaults(handler=_tune)

    dvc_yaml = sub.add_parser(
        "dvc-yaml", parents=[common], help="write dvc.yaml from the stage table (tuneops.stages)"
    )
    dvc_yaml.add_argument(
        "--check", action="store_true", help="only compare; exit 2 when dvc.yaml differs"
    )
    dvc_yaml.set_defaults(handler=_dvc_yaml)

    config = sub.add_parser("config", parents=[common], help="the resolved configuration")
    config.add_argument("action", choices=["show"], help="show: print every key, resolved")
    config.set_defaults(handler=_config)

    add_commands(sub, common)
    return parser


def _add_common_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    suppress = argparse.SUPPRESS
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(".") if defaults else suppress,
        help="project root (default .)",
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=None if defaults else suppress,
        help="params file (default params.yaml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[] if defaults else suppress,
        metavar="KEY=VALUE",
        help="override a params.yaml key, e.g. --set train.epochs=2 (YAML value)",
    )


def overrides(pairs: list[str]) -> dict[str, Any]:
    return {k: yaml.safe_load(v) for k, v in key_values(pairs, "--set", "train.epochs=2").items()}


def key_values(pairs: list[str], option: str, example: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} {pair!r}: expected KEY=VALUE, e.g. {example}")
        parsed[key] = value
    return parsed


def _run(args: argparse.Namespace) -> int:
    from flows.training import training_flow

    summary = training_flow(
        root=str(args.root),
        params_file=str(args.params) if args.params else None,
        overrides=overrides(args.overrides),
    )
    print("\n" + summary.text())
    return 0


def _stage(args: argparse.Namespace) -> int:
    from tuneops import stages

    if args.name not in stages.STAGES:
        raise ConfigError(f"stage {args.name!r}: unknown; expected one of {list(stages.STAGES)}")
    ctx = stages.load_context(args.root, args.params, overrides(args.overrides))
    with _stage_lock(ctx.paths.root, f"tuneops stage {args.name}"):
        result = stages.STAGES[args.name].run(ctx)
    print(f"{args.name}: {_describe(result)}")
    return 0


def _stage_lock(root: Path, command: str) -> AbstractContextManager[None]:
    """The project lock, taken by rank 0 only: under torchrun / accelerate launch the
    other ranks of `stage train` are the same run."""
    from pipeline.training.devices import process_rank
    from tuneops.runlock import project_lock

    return project_lock(root, command) if process_rank() == 0 else nullcontext()


def _retrain(args: argparse.Namespace) -> int:
    from flows.retrain import retrain_flow

    state = retrain_flow(
        root=str(args.root.resolve()),
        params_file=str(args.params) if args.params else None,
        overrides=overrides(args.overrides),
        return_state=True,
    )
    result = state.result()  # raises GateRejected / DataValidationError on a Failed run
    print(f"retrain: {state.message}")  # the verdict (train, re-gate or skip) and why
    if hasattr(result, "text"):
        print(f"\n{result.text()}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from flows.deployments import require_server, retrain_parameters, serve_retrain

    require_server("schedule")
    parameters = retrain_parameters(args.root, args.params, overrides(args.overrides))
    print(
        f"serving deployment tuneops-retrain/{args.name} on cron {args.cron!r} "
        f"for {parameters['root']}"
    )
    serve_retrain(args.name, args.cron, parameters)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from flows.deployments import deploy_retrain, require_server, retrain_parameters

    require_server("deploy")
    env = key_values(args.env, "--env", "MLFLOW_TRACKING_URI=http://mlflow:5000")
    parameters = retrain_parameters(args.root, args.params, overrides(args.overrides))
    deployment_id = deploy_retrain(
        args.pool, args.name, parameters, args.cron, args.image, env or None
    )
    print(
        f"deployment tuneops-retrain/{args.name} ({deployment_id}) in work pool {args.pool!r} "
        f"for {parameters['root']}; start a worker with `prefect worker start --pool "
        f"{args.pool}` and run it with `prefect deployment run tuneops-retrain/{args.name}`"
    )
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from tuneops import stages
    from tuneops.errors import NotReproduced
    from tuneops.reproduce import reproduce

    ctx = stages.load_context(args.root, args.params, overrides(args.overrides))
    result = reproduce(ctx, args.version, args.workspace)
    print(result.table())
    if not (result.same_data and result.same_metrics):
        raise NotReproduced(f"v{args.version} was not reproduced (see the table above)")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from tuneops import stages

    ctx = stages.load_context(args.root, args.params, overrides(args.overrides))
    result, version = stages.step_ingest(ctx, args.path.resolve())
    where = result.batch_file.relative_to(ctx.paths.root)
    if not result.added:
        print(f"{args.path}: already ingested as {where}; nothing to do")
        return 0
    pushed = f", pushed to DVC remote {version.remote!r}" if version and version.pushed else ""
    unit = ctx.task.row_unit
    print(
        f"{args.path}: {result.rows} {unit} validated and added as {where}; "
        f"data version {version.version if version else 'unknown'}{pushed}"
    )
    if result.drift is not None:
        print(result.drift.line())
    if result.dropped_rows:
        shown = ", ".join(r["source"] for r in result.dropped_rows[:5])
        more = len(result.dropped_rows) - 5
        print(
            f"{len(result.dropped_rows)} rows label a text two ways and prepare drops them "
            f"(validate.conflicting_labels: drop): {shown}"
            + (f" and {more} more" if more > 0 else "")
        )
    return 0


def _promote(args: argparse.Namespace) -> int:
    from pipeline.register import promote
    from tuneops import stages

    ctx = stages.load_context(args.root, args.params, overrides(args.overrides))
    verdict = promote(stages.register_inputs(ctx), args.version, args.reason, args.force)
    how = "forced, gate skipped" if verdict is None else verdict.summary()
    print(f"{ctx.params.registry.model_name}: champion is now v{args.version} ({how})")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from pipeline.register import audit_tags
    from pipeline.registry import registry_lock, rollback
    from tuneops import stages
    from tuneops.tracking import store_client

    ctx = stages.load_context(args.root, args.params, overrides(args.overrides))
    name = ctx.params.registry.model_name
    client = store_client(ctx.tracking_uri)
    with registry_lock(client, name):
        left, now = rollback(client, name, audit_tags("rollback", args.reason))
    print(f"{name}: champion v{left} -> v{now}; v{left} is now previous")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from tuneops import stages
    from tuneops.compare import compare

    ctx = stages.load_context(args.root, args.params, overrides(args.overrides))
    print(compare(ctx.tracking_uri, ctx.params.registry.model_name, args.a, args.b))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from tuneops import stages
    from tuneops.tune import tune

    if args.trials < 1:
        raise ConfigError(f"--trials {args.trials}: expected at least 1")
    ctx = stages.load_context(args.root, args.params, overrides(args.overrides))
    print(tune(ctx, args.trials).text())
    return 0


def _dvc_yaml(args: argparse.Namespace) -> int:
    from tuneops.dvcfile import render

    path = args.root.resolve() / "dvc.yaml"
    text = render()
    if args.check:
        if path.exists() and path.read_text(encoding="utf-8") == text:
            print(f"{path}: follows the stage table")
            return 0
        print(f"{path}: differs from the stage table; run `tuneops dvc-yaml`", file=sys.stderr)
        return 2
    path.write_text(text, encoding="utf-8")
    print(f"{path}: written from the stage table")
    return 0


def _config(args: argparse.Namespace) -> int:
    """Print the resolved configuration (presets and --set applied, defaults filled in)."""
    from tuneops import stages

    ctx = stages.load_context(args.root, args.params, overrides(args.overrides))
    print(yaml.safe_dump(ctx.params.recorded(), sort_keys=False), end="")
    return 0


def _describe(result: Any) -> str:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(result) and not isinstance(result, type):
        shown = {
            k: v
            for k, v in asdict(result).items()
            if k not in ("checks", "per_class", "conflict_examples", "dropped_rows")
        }
        return json.dumps(shown, default=str)
    return str(result)


def _ui(args: argparse.Namespace) -> int:
    from tuneops import stages
    from tuneops.config import redact_credentials

    ctx = stages.load_context(args.root, args.params, overrides(args.overrides))
    shown = redact_credentials(ctx.tracking_uri)
    if ctx.tracking_uri.startswith(("http://", "https://")):
        print(f"the tracking server {shown} serves its own UI: open it in a browser")
        return 0
    print(f"MLflow UI on http://{args.host}:{args.port} (store {shown}); Ctrl-C stops")
    # The store URI travels in the environment, not on the command line, which any user of
    # the machine can read (ps): a database URI may hold a password.
    command = [sys.executable, "-m", "mlflow", "ui", "--host", args.host, "--port", str(args.port)]
    env = os.environ | {"MLFLOW_BACKEND_STORE_URI": ctx.tracking_uri}
    return subprocess.call(command, cwd=ctx.paths.root, env=env)


if __name__ == "__main__":
    sys.exit(main())
