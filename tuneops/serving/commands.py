"""The serving subcommands of `tuneops`: predict, serve, pull-bundle.

Kept apart from tuneops.cli so that predict and serve import no torch or transformers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tuneops.errors import ConfigError


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    predict = sub.add_parser(
        "predict",
        parents=[common],
        help="classify texts, or a .csv/.jsonl file, with an exported ONNX bundle",
    )
    predict.add_argument("texts", nargs="*", help="texts to classify (or use --input)")
    _bundle_options(predict)
    predict.add_argument("--input", type=Path, help="a .csv or .jsonl file with a text column")
    predict.add_argument("--output", type=Path, help=".csv or .jsonl (default: JSON lines out)")
    predict.add_argument("--text-column", default="text")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.set_defaults(handler=_predict)

    serve = sub.add_parser(
        "serve", parents=[common], help="serve a bundle over HTTP (POST /predict, GET /health)"
    )
    _bundle_options(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-texts", type=int, default=64, help="texts per request (else 413)")
    serve.add_argument(
        "--max-chars",
        type=int,
        default=None,
        help="per text (else 422; default: what validation allowed, bundle.json's "
        "max_text_chars, validate.max_text_chars)",
    )
    serve.add_argument("--max-body-bytes", type=int, default=1_000_000, help="else 413")
    serve.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="micro-batching: how long a request waits for others to join (default 0: off; "
        "on a 2-core CPU it measured slower, see README)",
    )
    serve.add_argument("--max-batch", type=int, default=32, help="texts per onnxruntime call")
    serve.set_defaults(handler=_serve)

    pull = sub.add_parser(
        "pull-bundle",
        parents=[common],
        help="download a registered version's ONNX bundle (stamped with its version)",
    )
    pull.add_argument("ref", nargs="?", default="champion", help="version number or alias")
    pull.add_argument(
        "--out",
        type=Path,
        required=True,
        help="a new or empty folder, or a bundle pulled before (replaced whole)",
    )
    pull.set_defaults(handler=_pull)


def _bundle_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, default=Path("models/export"))
    parser.add_argument(
        "--model",
        default=None,
        help="fp32, int8 (uint8 weights), int8_s8 (int8 weights) or default (bundle.json's); "
        "unset: $TUNEOPS_MODEL, else picked by this CPU's flags",
    )
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")


def _classifier(args: argparse.Namespace) -> Any:
    from tuneops.errors import ModelFileError
    from tuneops.runtime import BundleError, load_bundle

    try:
        return load_bundle(args.bundle, threads=args.threads, model=args.model)
    except BundleError as exc:  # names the file: missing, truncated or not a model
        raise ModelFileError(str(exc)) from exc


def _predict(args: argparse.Namespace) -> int:
    from tuneops.serving.predict import predict_file, write_records

    if bool(args.texts) == bool(args.input):
        raise ConfigError("predict: give either texts or --input FILE, not both and not neither")
    if args.output and not args.input:
        raise ConfigError("predict: --output needs --input")
    classifier = _classifier(args)
    flat = args.output is not None and args.output.suffix.lower() == ".csv"
    if args.input:
        records = predict_file(classifier, args.input, args.text_column, args.batch_size, flat)
    else:
        predictions = classifier.predict(args.texts, args.batch_size)
        records = [
            {"text": t} | classifier.record(p) for t, p in zip(args.texts, predictions, strict=True)
        ]
    if args.output:
        write_records(records, args.output)
        print(
            f"predict: {len(records)} rows -> {args.output} "
            f"({classifier.model_file}: {classifier.choice.reason})"
        )
    else:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    return 0


def serve_limits(args: argparse.Namespace, classifier: Any) -> Any:
    """The request limits: --max-chars defaults to what validation allowed the training
    data (audit M13: the server took texts validation would have refused)."""
    from tuneops.serving.server import Limits

    max_chars = args.max_chars if args.max_chars is not None else classifier.max_text_chars
    return Limits(args.max_texts, max_chars, args.max_body_bytes)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tuneops.serving.server import create_app

    classifier = _classifier(args)
    limits = serve_limits(args, classifier)
    app = create_app(classifier, limits, args.batch_wait_ms, args.max_batch)
    print(
        f"serving {args.bundle} ({args.model or 'default model'}) on http://{args.host}:{args.port}"
        f" (POST /predict, GET /health, GET /metadata); Ctrl-C stops"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from tuneops import stages
    from tuneops.cli import overrides
    from tuneops.serving.pull import pull_bundle

    ctx = stages.load_context(args.root, args.params, overrides(args.overrides))
    stamp = pull_bundle(ctx.tracking_uri, ctx.params.registry.model_name, args.ref, args.out)
    print(f"pull-bundle: {stamp['model_uri']} -> {args.out}")
    return 0
