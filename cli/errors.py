"""The errors that are the user's to fix: ``adapler`` prints them as one line, ``adapler: error:
...``, and exits 2, never with a stack trace.

:class:`UserError` is the CLI's own; :func:`expected_errors` adds the library's, by name, so that
catching them imports nothing heavy: a class whose module was never imported can not have been
raised, so a module missing from ``sys.modules`` (MLflow behind ``adapler_pipelines.registry``)
is simply skipped. Every command module imports
UserError from here (never from ``adapler_cli.main``, which imports the commands).
"""

from __future__ import annotations

import importlib
import sys

from adapler.text import one_line as text_on_one_line


class UserError(Exception):
    """An error message for the user, printed without a stack trace."""


# (module, class): every one a ValueError / FileNotFoundError subclass with a one-line message.
LIGHT = (  # plain Python or already needed by every command: imported when caught
    ("adapler.artifacts", "ArtifactError"),  # not a model directory, pickles, bad run dir
    ("adapler.config", "ConfigError"),  # unknown key, bad value, bad YAML
    ("adapler.data", "DataError"),  # bad data file, row or column
)
HEAVY = (  # looked up only if their module is loaded (else nothing of theirs was raised)
    ("adapler.modeling", "UnsupportedBackbone"),
    ("adapler.onnx_export", "UnsupportedExport"),  # a backbone the ONNX graphs can not express
    ("adapler.onnx_runtime", "RuntimeUnavailable"),  # --runtime onnx --device cuda without the CUDA provider
    ("adapler.batching", "SaliencyMismatch"),
    ("adapler.operating_points", "OperatingPointError"),  # unknown point name, bad factor, target beyond the curve
    ("adapler_pipelines.registry", "RegistryError"),  # models:/ name or alias not there
    ("adapler_pipelines.report", "ReportError"),  # `adapler report` on a run that is not a pipeline run
    ("adapler.stage1_record", "Stage1Missing"),  # `adapler tune` with no stage 1 to reuse
)


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception classes ``main`` reports as one line (evaluated when an error is caught)."""
    classes: list[type[BaseException]] = [UserError]
    for module_name, name in LIGHT:
        classes.append(getattr(importlib.import_module(module_name), name))
    for module_name, name in HEAVY:
        cls = getattr(sys.modules.get(module_name), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            classes.append(cls)
    return tuple(classes)


def one_line(err: BaseException) -> str:
    """The message on one line (a multi-line message is joined; an empty one named by its class)."""
    return text_on_one_line(str(err)) or type(err).__name__
