"""Starting (or joining) the Ray instance that a pipeline runs on.

Ray Train's placement-group cleaner (a detached actor in every training run) asks Ray's state
API each second whether the run's controller is alive. In a worker, the state API finds "its"
cluster by looking at the machine, not at the worker's own connection: with no dashboard it
fails (a warning per second), and with a second Ray instance on the machine it can ask the wrong
one, read "controller gone" and remove the run's placement group, killing training (seen here:
a stage-1 epoch lost when another local instance with a dashboard started). So a private local
instance starts with its dashboard (which serves the state API) and every worker is pinned to
its own cluster through $RAY_ADDRESS.
"""

from __future__ import annotations

import os

WORKER_SETUP_HOOK = "adapler_pipelines.ray_local.pin_ray_address"


def pin_ray_address() -> None:
    """worker_process_setup_hook: Ray lookups in this worker go to the cluster it belongs to."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def init_ray(address: str | None) -> None:
    """Join `address` (or $RAY_ADDRESS); with neither, start a private local instance, never
    one found running on this machine, nor a dead one whose address file was left in /tmp/ray."""
    import ray

    if ray.is_initialized():
        return
    pinned = {"worker_process_setup_hook": WORKER_SETUP_HOOK}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        ray.init(address="local", include_dashboard=True, log_to_driver=True, runtime_env=pinned)
    else:
        ray.init(address=address, log_to_driver=True, runtime_env=pinned)
