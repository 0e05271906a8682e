"""Helpers shared by test modules (imported as ``helpers``: pytest puts ``tests/`` on the path
through its conftest.py). Not part of the installed product."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from adapler_deploy.ports import free_ports

ADAPLER = Path(sys.executable).with_name("adapler")


def free_port() -> int:
    """One TCP port free on 127.0.0.1 now."""
    return free_ports()[0]


def save_tiny_backbone(directory: Path, **settings) -> str:
    """A 2-layer, hidden-32 BERT (seeded; ``settings`` override its BertConfig) with the packaged
    MiniLM tokenizer, saved in ``directory``: a backbone that loads and trains in seconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from adapler.config import default_backbone

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=128, **{**sizes, **settings})
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@dataclass
class ServeProcess:
    """A running ``adapler serve``: its process, base URL and stderr file."""

    proc: subprocess.Popen
    url: str
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def adapler_serve(model_dir: str, *options: str, ready_s: float = 240) -> Iterator[ServeProcess]:
    """``adapler serve --model model_dir *options`` on a free 127.0.0.1 port, in a process group
    of its own with a private Ray instance (never the test session's), yielded once ``/healthz``
    answers. On exit: SIGTERM (a graceful stop) if it still runs, then SIGKILL to whatever is
    left of its process group."""
    port = free_port()
    # A short path of its own: Ray's session directory (unix sockets, at most 107 bytes) goes under it.
    tmp = Path(tempfile.mkdtemp(prefix="adapler-serve-"))
    env = {**os.environ, "RAY_TMPDIR": str(tmp)}
    env.pop("RAY_ADDRESS", None)
    command = [str(ADAPLER), "serve", "--model", model_dir, "--host", "127.0.0.1", "--port", str(port), *options]
    with open(tmp / "out", "w") as out, open(tmp / "err", "w") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=tmp, start_new_session=True)
    served = ServeProcess(proc, f"http://127.0.0.1:{port}", tmp / "err")
    try:
        deadline = time.monotonic() + ready_s
        while not _healthy(served.url):
            assert proc.poll() is None and time.monotonic() < deadline, served.stderr()[-3000:]
            time.sleep(1)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what is left of the process group started here
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


# `--set` overrides for a run that trains in seconds on a 48-example slice (with a tiny backbone)
TINY_RUN = [
    "data.source=rotten_tomatoes",
    "data.limit=48",
    "data.max_length=32",
    "stage1.epochs=1",
    "stage1.batch_size=16",
    "stage1.lr=1e-3",
    "stage2.epochs=1",
    "stage2.batch_size=16",
    "stage2.eta_lr=0.1",
    "stage2.predictor_lr=1e-3",
    "saliency_checkpoints=1",
]
