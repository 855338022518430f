"""`tuneops serve`: an ONNX bundle behind an HTTP JSON API (FastAPI, uvicorn, onnxruntime).

POST /predict  {"texts": ["...", ...]} -> {"predictions": [{label, score, probabilities}], ...}
GET  /health   200 {"status": "ok"} once the model is loaded
GET  /metadata what the bundle is: task, labels, model file, data version, test figures
GET  /stats    model calls made since start, the texts they scored and the largest call

Bad requests get a JSON body {"error": "..."} and never crash the server: a body over
the byte limit or more texts than allowed 413, a text over the character limit or a
malformed request 422, a body that is not JSON 400. No response carries a file path
or a traceback. Imports no torch or transformers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from tuneops import __version__
from tuneops.runtime import OnnxBundle
from tuneops.serving.batching import MicroBatcher

log = logging.getLogger("tuneops.serve")


@dataclass(frozen=True)
class Limits:
    max_texts: int = 64
    max_chars: int = 10_000
    max_body_bytes: int = 1_000_000


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str]


class _RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(
    classifier: OnnxBundle, limits: Limits, batch_wait_ms: float = 0.0, max_batch: int = 32
) -> FastAPI:
    """The app; with `batch_wait_ms` > 0 concurrent requests share onnxruntime calls."""
    batcher = MicroBatcher(classifier.predict, max_batch, batch_wait_ms / 1000.0)
    metadata = public_metadata(classifier, limits)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="tuneops model server", version=__version__, lifespan=lifespan)

    @app.exception_handler(_RequestError)
    async def request_error(_request: Request, exc: _RequestError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("predict failed")  # the traceback stays in the server log
        return JSONResponse({"error": "internal error"}, status_code=500)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return {
            "model_calls": batcher.calls,
            "texts": batcher.texts,
            "largest_call": batcher.largest_call,
        }

    @app.get("/metadata")
    async def get_metadata() -> dict[str, Any]:
        return metadata

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        texts = _parse(await _read_body(request, limits.max_body_bytes), limits)
        predictions = await batcher.predict(texts)
        return {
            "model": metadata["model_file"],
            "predictions": [classifier.record(p) for p in predictions],
        }

    return app


async def _read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _RequestError(413, f"request body is {declared} bytes; at most {max_bytes} allowed")
    body = bytearray()
    async for chunk in request.stream():  # a chunked body has no content-length to trust
        body += chunk
        if len(body) > max_bytes:
            raise _RequestError(413, f"request body over {max_bytes} bytes")
    return bytes(body)


def _parse(body: bytes, limits: Limits) -> list[str]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _RequestError(400, f"request body is not valid JSON: {exc}") from None
    try:
        texts = PredictRequest.model_validate(payload).texts
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        where = where.lstrip(".") or "body"
        raise _RequestError(
            422, f'{where}: {first["msg"]}; expected {{"texts": ["a text", ...]}}'
        ) from None
    if not texts:
        raise _RequestError(422, "texts: empty list; send at least one text")
    if len(texts) > limits.max_texts:
        raise _RequestError(
            413, f"texts: {len(texts)} texts; at most {limits.max_texts} per request"
        )
    for i, text in enumerate(texts):
        if len(text) > limits.max_chars:
            raise _RequestError(
                422, f"texts[{i}]: {len(text)} characters; at most {limits.max_chars} allowed"
            )
    return texts


def public_metadata(classifier: OnnxBundle, limits: Limits) -> dict[str, Any]:
    """What /metadata shows: facts about the model, never a local path."""
    meta = classifier.meta
    base_model = str(meta.get("base_model", ""))
    return {
        "task": meta.get("task"),
        "labels": classifier.labels,
        "max_length": classifier.max_length,
        "model_file": classifier.model_file,
        # Which model file runs and why: by this CPU's flags, or the override that won.
        "model_choice": {"model": classifier.choice.model, "reason": classifier.choice.reason},
        "default_model": meta.get("default_model", "fp32"),
        "models": meta.get("models", {}),
        "registered_model": meta.get("registered_model"),
        "model_version": meta.get("model_version"),
        "data_version": meta.get("data_version"),
        "mlflow_run_id": meta.get("mlflow_run_id"),
        "base_model": Path(base_model).name if base_model else None,
        "parity": meta.get("parity"),
        "limits": asdict(limits),
    }
