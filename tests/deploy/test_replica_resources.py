"""What a Serve replica asks Ray for (no Ray started, no GPU needed: the options, not a placement)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")


@pytest.mark.parametrize(("device", "gpus"), [("cpu", None), ("cuda", 1), ("cuda:0", 1)])
def test_a_replica_asks_for_one_gpu_when_its_device_is_cuda(device, gpus, tmp_path):
    from adapler_deploy.app import build_app

    app = build_app({"model": str(tmp_path), "device": device, "num_cpus": 0.5})
    options = app._bound_deployment.ray_actor_options  # what Serve passes to Ray for each replica
    assert options["num_cpus"] == 0.5
    assert options.get("num_gpus") == gpus
