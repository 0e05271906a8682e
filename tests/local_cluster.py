"""A Ray cluster of separate nodes on one machine, as on a real cluster: `ray start --head` plus
`ray start --address` for each further node, each node with its own temp dir, free ports and
declared CPUs. For the scale-out tests (tests/pipelines/conftest.py) and bench/scale.py: a test
helper, not part of the installed product (imported as ``local_cluster``, with ``tests/`` on the path).

Every node runs in a process group of its own and is ended by signalling that group, never by
`ray stop` (which ends every Ray instance on the machine, other people's too); its own temp dir
keeps /tmp/ray/ray_current_cluster of other instances untouched. The caller's process joins
as the driver (init_ray: workers pinned to this cluster).
"""

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

RAY_CLI = Path(sys.executable).parent / "ray"  # the `ray` command of this environment


@dataclass
class RayNodes:
    """A Ray cluster of separate nodes on this machine, this process connected as its driver."""

    address: str  # GCS host:port, for ray.init
    dashboard: str  # http://127.0.0.1:<port>: the job server, for `ray job submit --address`
    env: dict  # environment for Ray's CLI clients (PATH with this venv, auth off)
    node_ids: list[str]  # head first
    cpus_per_node: int


@contextlib.contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 2, env: dict | None = None) -> Iterator[RayNodes]:
    """``nodes`` Ray nodes on 127.0.0.1 (~20 s for two), each declaring ``cpus_per_node`` CPUs,
    ``env`` added to the environment of every node (e.g. S3 credentials, which the nodes' workers
    then read as on a real cluster). Yields once all are up and this process is their driver;
    afterwards the driver disconnects and the nodes are stopped and their temp dirs removed."""
    import ray

    from adapler_deploy.ports import free_ports
    from adapler_pipelines.ray_local import init_ray

    if not RAY_CLI.exists():
        raise FileNotFoundError(f"no `ray` command at {RAY_CLI}: install ray[default] in this environment")
    env = {**os.environ, **(env or {}), "PATH": f"{RAY_CLI.parent}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, *agents = free_ports(2 + nodes)
    # short temp dirs: Ray's socket paths must fit 107 bytes
    temp_dirs = [tempfile.mkdtemp(prefix=f"ray-{'head' if i == 0 else 'node'}-", dir="/tmp") for i in range(nodes)]
    common = ["--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}"]
    head = [
        "--head",
        f"--port={gcs}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
    ]
    processes: list[subprocess.Popen] = []
    try:
        for i, (temp_dir, agent) in enumerate(zip(temp_dirs, agents)):
            role = head if i == 0 else [f"--address=127.0.0.1:{gcs}"]
            processes.append(
                subprocess.Popen(
                    [
                        str(RAY_CLI),
                        "start",
                        *role,
                        f"--temp-dir={temp_dir}",
                        f"--dashboard-agent-listen-port={agent}",
                        *common,
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            if i == 0:
                _wait_for(lambda: Path(temp_dirs[0], "ray_current_cluster").is_file(), processes[0], "the head node")
        init_ray(f"127.0.0.1:{gcs}")
        alive = lambda: [n for n in ray.nodes() if n["Alive"]]  # noqa: E731
        _wait_for(lambda: len(alive()) == nodes, processes[-1], f"{nodes} nodes")
        head_id = ray.get_runtime_context().get_node_id()
        ids = sorted((n["NodeID"] for n in alive()), key=lambda node: node != head_id)
        yield RayNodes(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", env, ids, cpus_per_node)
    finally:
        ray.shutdown()
        _stop_groups(processes)
        for directory in temp_dirs:
            shutil.rmtree(directory, ignore_errors=True)


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll ``condition`` until true; an error when ``process`` exits first or after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} while starting")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(0.5)


def _stop_groups(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to each node's process group (raylet, GCS, dashboard, workers), all at once, then
    SIGKILL to what is left of them (Ray's graceful stop takes ~30 s; nothing of theirs outlives
    them but the temp dirs, which the caller removes)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        deadline = time.monotonic() + wait
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        time.sleep(2)  # the groups' other processes end after their parents
