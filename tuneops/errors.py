"""One exception type per failure family; the CLI maps each to one line and an exit code."""

from __future__ import annotations


class TuneopsError(Exception):
    """Base of every error tuneops raises on purpose. `exit_code` is the CLI's exit status."""

    exit_code = 1


class ConfigError(TuneopsError):
    """params.yaml (or a CLI argument) is missing, malformed or has unknown keys."""

    exit_code = 2


class DataValidationError(TuneopsError):
    """Input data failed validation; the message names the file, rows or fields."""

    exit_code = 3


class GateRejected(TuneopsError):
    """The evaluation gate rejected the candidate; the champion was left where it was."""

    exit_code = 4


class ExportParityError(TuneopsError):
    """The ONNX model does not reproduce the PyTorch model within tolerance."""

    exit_code = 5


class ExternalToolError(TuneopsError):
    """An external tool (git, dvc) or service (MLflow, Prefect) failed or is unreachable."""

    exit_code = 6


class NotReproduced(TuneopsError):
    """A rebuilt model version differs from the recorded one (data or metrics)."""

    exit_code = 7


class ModelFileError(TuneopsError):
    """A model file (safetensors weights, ONNX graph, bundle metadata) is missing, truncated,
    corrupt or of a refused kind (pickled weights); the message names the file."""

    exit_code = 8


class ProjectBusy(TuneopsError):
    """Another tuneops run (flow, stage, ingest) holds this project's run lock; the message
    names it (command, pid, host, start time)."""

    exit_code = 9


EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        TuneopsError,
        ConfigError,
        DataValidationError,
        GateRejected,
        ExportParityError,
        ExternalToolError,
        NotReproduced,
        ModelFileError,
        ProjectBusy,
    )
}
