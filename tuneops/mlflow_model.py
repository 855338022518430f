"""MLflow pyfunc over the ONNX bundle, logged as "model from code" (no pickling).

`mlflow.pyfunc.load_model("models:/NAME@champion").predict(pd.DataFrame({"text": [...]}))`
returns one row per text: label, score and one probability column per label.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext


class OnnxBundleModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        from tuneops.runtime import OnnxClassifier

        self.classifier = OnnxClassifier(context.artifacts["bundle"])

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "text" not in frame.columns:
            raise ValueError(f"expected a 'text' column, found {list(frame.columns)}")
        predictions = self.classifier.predict([str(t) for t in frame["text"]])
        return pd.DataFrame(
            [
                {"label": p.label, "score": p.score}
                | {f"p_{k}": v for k, v in p.probabilities.items()}
                for p in predictions
            ]
        )


mlflow.models.set_model(OnnxBundleModel())
