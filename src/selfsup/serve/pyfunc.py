"""A text classifier as an MLflow pyfunc model: any MLflow client sends texts and gets labels back.

    mlflow.pyfunc.load_model("models:/selfsup-intent@champion").predict(["my bag is lost"])  # -> ["baggage"]
    mlflow models serve -m models:/selfsup-intent/1 --env-manager local   # POST /invocations {"inputs": [...]}

The registered model holds the exported folder (``model.onnx``, ``tokenizer.json``, ``labels.json``,
``export.json``) as the artifact ``MODEL_ARTIFACT``; ``load_context`` opens it with ``OnnxClassifier`` (onnxruntime
and tokenizers only: no torch). ``selfsup.adapters.mlflow`` logs it as an MLflow "model from code"
(``MODEL_CODE``), so loading never unpickles a class, with the selfsup source as its ``code_paths``: MLflow puts
that copy first on ``sys.path`` when it loads the model, so a process that had not imported selfsup yet runs the
registering commit's selfsup from then on.

Texts follow ``selfsup.serve.inputs.check_text``: an empty or invisible text fails the whole call (HTTP 400 from
`mlflow models serve`) rather than getting a confident label.

MLflow's ``PythonModel`` is the base class, yet importing this module imports neither mlflow nor pandas, because
the core must import where they are absent: ``TextClassifierModel`` is created on first use (PEP 562 module
``__getattr__``), and pandas inputs are recognised only when pandas is already loaded (no object can be a
DataFrame otherwise).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.serve.inputs import TextRejected, check_text
from selfsup.serve.predict import OnnxClassifier

MODEL_ARTIFACT = "model"  # the exported folder, in the pyfunc's ``artifacts``
TEXT_COLUMN = "text"
_ACCEPTED = f"pass a list of strings, a pandas Series of strings, or a DataFrame with a {TEXT_COLUMN!r} column"
# the "model from code" file the registry stores with every text version: MLflow runs it at load time
MODEL_CODE = """\
# selfsup text classifier: the entry point MLflow runs when this model is loaded (an MLflow "model from code")
from mlflow.models import set_model

from selfsup.serve.pyfunc import TextClassifierModel

set_model(TextClassifierModel())
"""


def texts_of(model_input: object) -> list[str]:
    """The texts of a pyfunc input: a list (or tuple, or 1-D array) of strings, a pandas Series, or a DataFrame with
    a ``text`` column or a single column. Every text must pass ``check_text``; ``TextRejected`` names the first
    that does not (``text 2`` is the second)."""
    texts = _as_list(model_input)
    for index, text in enumerate(texts, start=1):
        check_text(text, where=f"text {index}")
    return texts


def _as_list(model_input: object) -> list:
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(model_input, pd.DataFrame):
        return _column_of(model_input)
    if pd is not None and isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, np.ndarray):
        if model_input.ndim == 1:  # `mlflow models serve` hands {"inputs": [...]} over as an array
            return model_input.tolist()
        raise TextRejected(f"the model input is an array of shape {model_input.shape}; {_ACCEPTED}")
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    if isinstance(model_input, str):  # iterating it would classify each character
        raise TextRejected(f"the model input is one string; {_ACCEPTED}, e.g. [\"my bag is lost\"]")
    raise TextRejected(f"the model input is a {type(model_input).__name__}; {_ACCEPTED}")


def _column_of(frame: Any) -> list:
    if TEXT_COLUMN in frame.columns:
        return frame[TEXT_COLUMN].tolist()
    if len(frame.columns) == 1:
        return frame.iloc[:, 0].tolist()
    raise TextRejected(f"the model input is a DataFrame with the columns {list(frame.columns)}; it needs a "
                       f"{TEXT_COLUMN!r} column, or exactly one column")


class TextClassifier:
    """What the pyfunc does, without MLflow: open the exported folder, answer a batch of texts with labels."""

    classifier: OnnxClassifier

    def load_context(self, context: Any) -> None:
        self.classifier = OnnxClassifier(Path(context.artifacts[MODEL_ARTIFACT]))

    def labels_of(self, model_input: object) -> list[str]:
        texts = texts_of(model_input)
        return [prediction.label for prediction in self.classifier.predict(texts)]


@functools.cache
def _model_class() -> type:
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import PythonModel

    # ``model_input`` carries no annotation on purpose: MLflow would validate and convert inputs by it, and this
    # model takes several shapes (see ``texts_of``)
    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        try:
            return self.labels_of(model_input)
        except TextRejected as err:  # `mlflow models serve` gives any other error a generic message
            raise MlflowException.invalid_parameter_value(str(err)) from None

    # the (private) flag MLflow's own models set: with no annotation to validate against, MLflow would only warn,
    # on every load, that there is none, and a warnings filter cannot silence it (MLflow resets filters around it)
    return type("TextClassifierModel", (TextClassifier, PythonModel),
                {"__module__": __name__, "__qualname__": "TextClassifierModel", "predict": predict,
                 "_skip_type_hint_validation": True,
                 "__doc__": "A selfsup text classifier as an MLflow pyfunc: texts in, labels out."})


def __getattr__(name: str) -> type:
    if name == "TextClassifierModel":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
