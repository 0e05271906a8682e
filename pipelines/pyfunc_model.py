"""The MLflow pyfunc of an AdapLeR model, logged as *models from code*.

``pipelines/registry.py`` logs this file (``python_model=<path of this file>``) with one artefact,
``model_dir``: the HF-style AdapLeR directory (config.json, safetensors, tokenizer). MLflow stores
the file as source and runs it at load time, so no pickled Python object enters the registry;
the weights are the directory's safetensors files.

Inference is :class:`adapler.inference.Predictor`, the same path as ``adapler predict`` and the
Serve deployment (no second copy of tokenisation or batching).

Input, one of:
  - a list of str (or a str, a pandas Series, a 1-d array);
  - a pandas DataFrame with a ``text`` column, optionally ``text_pair`` (None/NaN = no pair) and
    ``id`` (copied to the output, the join key); a one-column frame without ``text`` is read as
    the texts (MLflow turns a list into such a frame);
  - a dict of columns (``{"text": [...], "text_pair": [...]}``) or a list of row dicts.
An ``operating_point`` column (a stored name per row; empty = the params' choice) runs each row
at its point (:mod:`adapler.operating_points`); the params ``operating_point``,
``target_speedup`` or ``factor`` (at most one) set it for every other row.
Output: a DataFrame, one row per input in input order: ``id`` (when given), ``label``,
``label_id``, ``probabilities`` (dict label -> probability), ``input_tokens``, ``kept_tokens``
(tokens entering the last layer), ``flops_speedup`` (backbone FLOPs / AdapLeR FLOPs),
``operating_point`` (the name of the point it ran at) and ``eta_factor`` (its factor).

Why the input type hint is ``pd.DataFrame`` and the signature has no input schema: an MLflow
3.17 signature cannot accept both a list of str and a frame with ``text`` + ``text_pair``. The
``list[str]`` hint infers a signature, but MLflow then reduces every frame to its first string
column (the pairs are dropped without an error); a named-column schema (text, text_pair) makes
MLflow reject a plain list ("Model is missing inputs ['text']"). So the registry logs an explicit
signature with the output schema only, an input example, and this code checks its input itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

OUTPUT_COLUMNS = [
    "label",
    "label_id",
    "probabilities",
    "input_tokens",
    "kept_tokens",
    "flops_speedup",
    "operating_point",
    "eta_factor",
]
POINT_PARAMS = ("operating_point", "target_speedup", "factor")  # the knob, as pyfunc params


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def to_frame(model_input: Any) -> pd.DataFrame:
    """Any accepted input -> a DataFrame with ``text`` (str), ``text_pair`` (str or None), maybe ``id``."""
    data = model_input
    if isinstance(data, str):
        data = [data]
    if isinstance(data, np.ndarray):
        data = data.reshape(-1).tolist()
    elif isinstance(data, (pd.Series, tuple)):
        data = list(data)
    if isinstance(data, list):
        if all(isinstance(item, Mapping) for item in data) and data:
            frame = pd.DataFrame(list(data))
        else:
            frame = pd.DataFrame({"text": data})
    elif isinstance(data, Mapping):
        columns = {k: (v if isinstance(v, (list, tuple, np.ndarray, pd.Series)) else [v]) for k, v in data.items()}
        frame = pd.DataFrame(columns)
    elif isinstance(data, pd.DataFrame):
        frame = data
    else:
        raise TypeError(f"expected a list of str or a DataFrame with a 'text' column, got {type(model_input).__name__}")
    if "text" not in frame.columns:
        if len(frame.columns) == 1:  # a list that MLflow (or the caller) made into a one-column frame
            frame = frame.rename(columns={frame.columns[0]: "text"})
        else:
            raise ValueError(
                f"the input needs a 'text' column (optionally 'text_pair', 'id'); got columns {list(frame.columns)}"
            )
    texts = frame["text"].tolist()
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(
            f"every text must be a string; rows {bad[:5]} are {[type(texts[i]).__name__ for i in bad[:5]]}"
        )
    out = pd.DataFrame({"text": texts}, index=frame.index)
    if "text_pair" in frame.columns:
        pairs = [None if _missing(p) else p for p in frame["text_pair"].tolist()]
        bad = [i for i, p in enumerate(pairs) if p is not None and not isinstance(p, str)]
        if bad:
            raise ValueError(f"text_pair must be a string or empty; rows {bad[:5]} are not")
        out["text_pair"] = pd.Series(pairs, index=frame.index, dtype=object)
    else:
        out["text_pair"] = pd.Series([None] * len(out), index=frame.index, dtype=object)
    if "id" in frame.columns:
        out["id"] = frame["id"].astype(str).tolist()
    if "operating_point" in frame.columns:
        names = [None if _missing(n) or n == "" else n for n in frame["operating_point"].tolist()]
        bad = [i for i, n in enumerate(names) if n is not None and not isinstance(n, str)]
        if bad:
            raise ValueError(f"operating_point must be a stored point's name or empty; rows {bad[:5]} are not")
        out["operating_point"] = pd.Series(names, index=frame.index, dtype=object)
    return out


class AdapLeRPyfunc(PythonModel):
    """Loads the AdapLeR directory of ``context.artifacts["model_dir"]`` into a Predictor.

    ``runtime`` ("auto", the default: ONNX Runtime on CPU; "torch" or "onnx") and ``quantize``
    ("none" or "int8") come from the model config, settable at load time:
    ``mlflow.pyfunc.load_model(uri, model_config={"runtime": "onnx"})``."""

    def load_context(self, context) -> None:
        from adapler.inference import Predictor  # imported here: the file is also read at log time

        options = context.model_config or {}
        self.predictor = Predictor.from_directory(
            context.artifacts["model_dir"],
            runtime=options.get("runtime", "auto"),
            quantize=options.get("quantize", "none"),
        )

    # The hint is pd.DataFrame on purpose (see the module docstring): MLflow neither infers a
    # signature from it nor rewrites the input, so lists and frames with text_pair reach this code.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = to_frame(model_input)
        if frame.empty:
            return pd.DataFrame(columns=(["id"] if "id" in frame.columns else []) + OUTPUT_COLUMNS)
        pairs = frame["text_pair"].tolist()
        knob = {k: v for k, v in (params or {}).items() if k in POINT_PARAMS and v is not None}
        default = self.predictor.resolve(**knob)  # OperatingPointError (a ValueError) names the stored points
        names = frame["operating_point"].tolist() if "operating_point" in frame.columns else [None] * len(frame)
        resolved = {name: self.predictor.resolve(operating_point=name) for name in set(names) - {None}}
        predictions = self.predictor.predict(
            frame["text"].tolist(),
            pairs if any(p is not None for p in pairs) else None,
            points=[default if name is None else resolved[name] for name in names],
        )
        rows = [
            {
                "label": p.label,
                "label_id": p.label_id,
                "probabilities": p.probabilities,
                "input_tokens": p.input_tokens,
                "kept_tokens": p.kept_lengths[-1],
                "flops_speedup": p.flops_speedup,
                "operating_point": p.operating_point.name if p.operating_point else None,
                "eta_factor": p.operating_point.factor if p.operating_point else 1.0,
            }
            for p in predictions
        ]
        result = pd.DataFrame(rows, columns=OUTPUT_COLUMNS, index=frame.index)
        if "id" in frame.columns:
            result.insert(0, "id", frame["id"])
        return result


mlflow.models.set_model(AdapLeRPyfunc())
