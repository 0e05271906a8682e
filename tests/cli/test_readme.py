"""The README's first "Using it" block, run as written (like Ray's runnable doc snippets), so that
the README can not drift from the CLI: a small `adapler demo` in a temporary working directory
(its own ./mlflow.db and runs/), then every command of the block in order, each exit 0.

Only two things are changed from the text: `.venv/bin/adapler` becomes this environment's
`adapler`, and `serve` gets a free port (the curl line goes to it, as an HTTP request). `serve`
runs in its own process group, is probed over HTTP, then stopped by SIGINT to that group (what
Ctrl-C does in a terminal). The demo is the preset with a tiny random 6-layer backbone and a
48-example slice, so the whole test takes minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port, save_tiny_backbone

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- readme-test:"
ADAPLER = Path(sys.executable).with_name("adapler")
SERVE_READY_S = 300
COMMAND_TIMEOUT_S = 600
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")  # the demo's data: BBC News


def readme_commands(text: str) -> list[list[str]]:
    """The commands of the bash block after the marker, as argv lists: continuation lines joined,
    comments dropped."""
    _, found, after = text.partition(MARKER)
    assert found, f"no {MARKER} marker in README.md"
    block = re.search(r"```bash\n(.*?)```", after, re.S)
    assert block, "no ```bash block after the marker"
    commands, current = [], ""
    for line in block.group(1).splitlines():
        current += line
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        argv = shlex.split(current, comments=True)
        if argv:
            commands.append(argv)
        current = ""
    return commands


def test_readme_block_parses():
    commands = readme_commands((ROOT / "README.md").read_text())
    assert [c[0] for c in commands if c[0] != "curl"] == [".venv/bin/adapler"] * (len(commands) - 1)
    subcommands = [c[1] for c in commands if c[0] != "curl"]
    assert {"predict", "evaluate", "calibrate", "serve"} <= set(subcommands)
    assert commands[-1][0] == "curl" and "-d" in commands[-1]  # continuation joined, comment dropped


def _environment() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "PYTEST_"))
    }  # ./mlflow.db, a private Ray
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
    )
    env.setdefault("RAY_AUTH_MODE", "disabled")  # as the other tests' local Ray: 127.0.0.1 only
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = COMMAND_TIMEOUT_S) -> str:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    shown = shlex.join(argv).replace(str(ADAPLER), "adapler")
    print(f"{time.perf_counter() - started:6.1f} s  {shown}", file=sys.stderr)
    assert done.returncode == 0, f"{shown} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def _http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 60):
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def _curl_as_request(argv: list[str], port: int) -> dict:
    """The README's curl line as an HTTP request to the test's port: -H and -d, the URL."""
    url, headers, data = None, {}, None
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-H", "--header"):
            key, _, value = next(args).partition(":")
            headers[key.strip()] = value.strip()
        elif arg in ("-d", "--data", "--data-raw"):
            data = next(args).encode()
        elif not arg.startswith("-"):
            url = arg
    assert url, argv
    url = re.sub(r":8000\b", f":{port}", url if "://" in url else f"http://{url}")
    status, body = _http(url, data, headers)
    assert status == 200, body
    return json.loads(body)


class Serve:
    """`adapler serve ...` in its own process group, ready once /healthz answers."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], port: int, log: Path):
        self.port, self.log = port, log
        self.out = log.open("w")
        self.process = subprocess.Popen(
            [*argv, "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVE_READY_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (
                f"serve exited {self.process.returncode}:\n{self.log.read_text()[-4000:]}"
            )
            try:
                if _http(f"http://127.0.0.1:{self.port}/healthz", timeout=5)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(2)
        pytest.fail(f"serve not ready after {SERVE_READY_S} s:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> int:
        """SIGINT to the group (Ctrl-C); SIGKILL to the group if it has not exited after 120 s."""
        try:
            os.killpg(self.process.pid, signal.SIGINT)
            return self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
            return -9
        except ProcessLookupError:
            return self.process.wait(timeout=30)
        finally:
            self.out.close()


@pytest.mark.slow
def test_readme_commands_work_after_the_demo(tmp_path):
    commands = readme_commands((ROOT / "README.md").read_text())
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(ROOT / "tests" / "fixtures", work / "tests" / "fixtures")  # the block names tests/fixtures/eraser
    env = _environment()
    backbone = save_tiny_backbone(tmp_path / "tiny-backbone", num_hidden_layers=6)
    demo = [str(ADAPLER), "demo"]
    for item in (
        f"model.backbone={backbone}",
        "data.limit=48",
        "stage1.epochs=1",
        "stage1.batch_size=16",
        "stage2.epochs=1",
        "stage2.batch_size=16",
        "tune.num_samples=1",
        "ray.cpus_per_worker=1",
        # the block loads @champion, which a run that warns does not get; a tiny random
        # backbone may well warn (the real demo's run does not)
        "mlflow.promote=always",
    ):
        demo += ["--set", item]
    out = _run(demo, work, env, timeout=1800)
    print(out[out.rfind("registered:") :], file=sys.stderr)  # what the demo told the user to do next
    assert "models:/adapler-demo@champion" in out and "runs/demo/model" in out, out[-3000:]
    assert (work / "runs" / "demo" / "model" / "config.json").is_file()

    serve, code = None, None
    try:
        for argv in commands:
            if argv[0] == "curl":
                assert serve is not None, "a curl line before any serve line"
                reply = _curl_as_request(argv, serve.port)
                assert reply["predictions"] and reply["predictions"][0]["label"] in BBC_TOPICS, reply
                continue
            assert argv[0] == ".venv/bin/adapler", argv
            argv = [str(ADAPLER), *argv[1:]]
            if argv[1] == "serve":
                assert serve is None, "one serve at a time"
                started = time.perf_counter()
                serve = Serve(argv, work, env, free_port(), tmp_path / "serve.log")
                serve.wait_ready()
                print(f"{time.perf_counter() - started:6.1f} s  {shlex.join(argv[1:])} (ready)", file=sys.stderr)
                continue
            _run(argv, work, env)
    finally:  # stopped whatever happened; its exit code checked only if the rest passed
        if serve is not None:
            started = time.perf_counter()
            code = serve.stop()
            print(f"{time.perf_counter() - started:6.1f} s  serve stopped by SIGINT to its group", file=sys.stderr)
    assert serve is not None, "the block has no serve line"
    assert code == 0, f"serve exited {code} after SIGINT:\n{serve.log.read_text()[-4000:]}"
