"""``adapler serve``: the Serve application of :mod:`adapler_deploy.app` in the foreground.

Wired into the CLI by ``cli/main.py`` (``add_serve_command(sub)`` in ``build_parser``). Starts a
private local Ray instance in this process (``address="local"``: in-process, so no Ray auth
token is needed, and never a ``ray start`` cluster that happens to run here; ``--address`` or
``RAY_ADDRESS`` joins one instead), Serve on 127.0.0.1, the application, and waits until Ctrl-C
(or SIGTERM), then shuts Serve down.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from adapler_cli.errors import UserError
from adapler_deploy import DEFAULT_MODEL


def add_serve_command(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP with Ray Serve (127.0.0.1, autoscaling) until Ctrl-C",
        description='POST /predict {"texts": [...], "explain": false}, GET /healthz, GET /stats.',
    )
    s.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"AdapLeR model directory or models:/<name>@<alias> (default: {DEFAULT_MODEL})",
    )
    s.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow tracking URI for models:/ (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS", ""),
        help="join this Ray cluster (default: $RAY_ADDRESS, else a private local instance); "
        "Ctrl-C then shuts down Serve on that cluster",
    )
    s.add_argument(
        "--removal",
        default="packed",
        choices=["packed", "masked", "none"],
        help="packed: AdapLeR (default); none: the plain backbone, as a baseline",
    )
    s.add_argument(
        "--runtime",
        default="auto",
        choices=["auto", "torch", "onnx"],
        help="onnx: ONNX Runtime (exported on first load, then cached); torch: PyTorch eager; "
        "auto (default): onnx on CPU, torch on GPU or with --removal masked",
    )
    s.add_argument("--replicas", type=int, help="a fixed number of replicas (default: autoscale)")
    s.add_argument("--min-replicas", type=int, default=1)
    s.add_argument("--max-replicas", type=int, default=2)
    s.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=8.0,
        help="autoscaling target of in-flight requests per replica",
    )
    s.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any application setting, e.g. --set max_batch_tokens=4096 --set max_texts=64 (repeatable)",
    )
    s.set_defaults(func=run_serve)
    return s


def serve_args(args: argparse.Namespace) -> dict:
    """The application arguments (``build_app``) from the command line, validated."""
    from pydantic import ValidationError

    from adapler_deploy.schemas import ServeSettings

    values: dict = {
        "model": args.model,
        "tracking_uri": args.tracking_uri,
        "removal": args.removal,
        "runtime": args.runtime,
        "num_cpus": args.num_cpus,
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in ServeSettings.model_fields:
            raise UserError(
                f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(ServeSettings.model_fields)}"
            )
        values[key] = value
    try:
        settings = ServeSettings(**values)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "settings"
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        raise UserError(f"invalid serve setting {where}: {message}") from None
    out = settings.model_dump()
    if args.replicas is not None:
        if args.replicas < 1:
            raise UserError("--replicas must be >= 1")
        out["num_replicas"] = args.replicas
    else:
        if not 1 <= args.min_replicas <= args.max_replicas:
            raise UserError(f"need 1 <= --min-replicas ({args.min_replicas}) <= --max-replicas ({args.max_replicas})")
        out["autoscaling_config"] = {
            "min_replicas": args.min_replicas,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing_requests,
            "upscale_delay_s": 5,
            "downscale_delay_s": 60,
        }
    return out


def check_model(model: str, tracking_uri: str = "") -> None:
    """Fail early, with one line, on a model the replicas could not load."""
    from adapler.artifacts import find_model_dir, is_model_uri, parse_model_uri

    try:
        if is_model_uri(model):
            name, alias = parse_model_uri(model)
            from adapler_pipelines.registry import model_version

            model_version(name, alias, tracking_uri)
        else:
            find_model_dir(model)
    except ValueError as err:  # ArtifactError, RegistryError, a malformed URI
        raise UserError(str(err)) from None


def _check_port(host: str, port: int) -> None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as err:
        raise UserError(f"can not listen on {host}:{port}: {err.strerror}") from None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; systemd, Kubernetes, `ray job stop`
GRACEFUL_STOP_S = 30  # for requests in flight to finish (the deployment's graceful_shutdown_timeout_s is 10)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _delete_app(serve) -> None:
    with contextlib.suppress(Exception):
        serve.delete("adapler")


def run_serve(args: argparse.Namespace) -> None:
    app_args = serve_args(args)
    check_model(args.model, args.tracking_uri)
    _check_port(args.host, args.port)
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            print(
                f"adapler serve: warning: listening on {args.host}, not only on this machine; "
                "the service has no authentication",
                file=sys.stderr,
            )
    except ValueError:
        pass

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray
    from ray import serve

    from adapler.inference import resolve_runtime
    from adapler_deploy.app import build_app

    # Default: a private local Ray instance, so that Ctrl-C (serve.shutdown) can not take down the
    # Serve applications of a cluster someone else started here; --address / $RAY_ADDRESS joins one.
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    ray.init(address=args.address or "local", ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    # ray.init leaves SIGTERM (systemd, Kubernetes, `ray job stop`) to Ray: the core worker's
    # failure handler dumps a native stack, then the local node's handler kills Ray's processes
    # under Serve and the driver aborts (exit 134). Stop the way Ctrl-C does instead: Serve lets
    # in-flight requests finish, shuts down, exit 0. (signal.signal replaces both handlers; SIGINT
    # is set again too, so that no handler installed during start-up can swallow Ctrl-C.)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(app_args), name="adapler", route_prefix="/", blocking=False)
        url = f"http://{args.host}:{args.port}"
        local = Path(app_args["model"])  # a registry model's family is read by the deployment only
        runtime = resolve_runtime(
            app_args["runtime"], app_args["device"], app_args["removal"], local if local.is_dir() else None
        )
        print(
            f"adapler serve: {args.model} (removal={app_args['removal']}, runtime={runtime}) at {url}/predict "
            f"(also {url}/healthz, {url}/stats, {url}/docs); Ctrl-C to stop",
            flush=True,
        )
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C or SIGTERM (or one forwarded twice, e.g. by `timeout`) must not abort the
        # shutdown half-way and leave Serve actors behind: ignore them for the few seconds this takes.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        print("adapler serve: stopping", file=sys.stderr, flush=True)
        try:
            # serve.shutdown kills the HTTP proxy at once, dropping the requests in flight. Deleting
            # the application first lets its replicas finish them (graceful_shutdown_timeout_s)
            # while the proxy still carries their answers. Best effort, and bounded (a Ctrl-C to the
            # whole process group also stops Ray's own processes): shutdown follows anyway.
            deleting = threading.Thread(target=_delete_app, args=(serve,), daemon=True)
            deleting.start()
            deleting.join(timeout=GRACEFUL_STOP_S)
            serve.shutdown()
        finally:
            ray.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
