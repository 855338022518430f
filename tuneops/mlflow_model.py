"""MLflow pyfunc over the ONNX bundle, logged as "model from code" (no pickling).

`mlflow.pyfunc.load_model("models:/NAME@champion").predict(pd.DataFrame({"text": [...]}))`
returns one row per text: for a text classifier label, score and one probability column
per label; for a token classifier an `entities` column holding a JSON list of
{type, start, end, text, score}.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext


def predictions_frame(bundle: Any, texts: list[str]) -> pd.DataFrame:
    """The pyfunc's output for `texts` (also used to log the model's signature)."""
    return pd.DataFrame([bundle.frame_row(p) for p in bundle.predict(texts)])


class OnnxBundleModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        from tuneops.runtime import load_bundle

        self.classifier = load_bundle(context.artifacts["bundle"])

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "text" not in frame.columns:
            raise ValueError(f"expected a 'text' column, found {list(frame.columns)}")
        return predictions_frame(self.classifier, [str(t) for t in frame["text"]])


mlflow.models.set_model(OnnxBundleModel())
