"""The private local Ray instance of a pipeline run: its workers ask their own cluster's state API.

Not a module-scoped `ray_local` cluster: this starts the instance the way `adapler run` does."""

from __future__ import annotations

import os

import pytest

from adapler_pipelines.ray_local import init_ray


@pytest.fixture
def pipeline_ray(monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(None)
    yield ray
    ray.shutdown()


def test_workers_are_pinned_to_their_own_cluster(pipeline_ray):
    ray = pipeline_ray

    @ray.remote(num_cpus=0)
    class Probe:
        def address(self) -> str | None:
            return os.environ.get("RAY_ADDRESS")

        def state_of(self, actor_id: str) -> str:
            from ray.util.state import get_actor

            return get_actor(actor_id, timeout=30).state  # what Ray Train's cleaner asks

    probe, other = Probe.remote(), Probe.remote()
    assert ray.get(probe.address.remote()) == ray.get_runtime_context().gcs_address
    ray.get(other.address.remote())
    assert ray.get(probe.state_of.remote(other._actor_id.hex())) == "ALIVE"
