"""``adapler report``: the pictures of a finished pipeline run (:mod:`adapler_pipelines.report`).

Wired into the CLI by ``cli/main.py`` (``add_report_command(sub)`` in ``build_parser``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from adapler_cli.errors import UserError


def add_report_command(subparsers) -> argparse.ArgumentParser:
    r = subparsers.add_parser(
        "report",
        help="Pareto plot, retention plot and kept-token highlight of a pipeline run, logged to MLflow",
        description="Writes pareto.csv, pareto.png, retention.png and highlight.html for the top-level MLflow "
        "run of `adapler run` / `tune` / `demo`, and logs them under the run's report/ artefacts.",
    )
    r.add_argument(
        "--run",
        required=True,
        metavar="RUN_ID",
        help="the pipeline's top-level run id (the run named after the config; the parent of the stage runs)",
    )
    r.add_argument("--out", help="directory for the files (default: reports/<RUN_ID>)")
    r.add_argument(
        "--tracking-uri", default="", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    r.add_argument("--examples", type=int, default=5, help="test examples in the highlight (default 5)")
    r.set_defaults(func=run_report)
    return r


def run_report(args: argparse.Namespace) -> None:
    from adapler_pipelines.report import ReportError, write_report

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per download is noise
    out = Path(args.out or Path("reports") / args.run)
    try:
        files = write_report(args.run, out, args.tracking_uri, args.examples)
    except ReportError as err:
        raise UserError(str(err)) from None
    for path in files:
        print(path)
