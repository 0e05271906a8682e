"""`adapler serve`'s arguments, checked before Ray starts: application settings from the flags
and --set, the replicas, and a model the replicas could not load (one line each)."""

from __future__ import annotations

import argparse

import pytest

from adapler_cli.errors import UserError
from adapler_cli.serve import add_serve_command, check_model, serve_args


def test_serve_command_checks_its_arguments(tiny_model_factory, save_review_model, tmp_path):
    model_dir = save_review_model(tiny_model_factory(num_labels=2), tmp_path / "model")
    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--model", model_dir, "--set", "max_batch_tokens=4096", "--max-replicas", "3"])
    app_args = serve_args(args)
    assert app_args["max_batch_tokens"] == 4096 and app_args["autoscaling_config"]["max_replicas"] == 3
    check_model(model_dir)
    (tmp_path / "bad").mkdir()
    for argv, message in (
        (["serve", "--model", str(tmp_path / "nope")], "not found"),
        (["serve", "--model", str(tmp_path / "bad")], "not an AdapLeR model directory"),
        (["serve", "--model", "models:/no-alias"], "models:/<name>@<alias>"),
        (["serve", "--model", model_dir, "--set", "max_request_tokens=99999"], "max_request_tokens"),
        (["serve", "--model", model_dir, "--set", "colour=red"], "KEY=VALUE"),
    ):
        with pytest.raises(UserError, match=message):
            args = parser.parse_args(argv)
            serve_args(args)
            check_model(args.model)
    (tmp_path / "pickled").mkdir()
    for name in ("config.json", "model.safetensors", "adapler.safetensors", "pytorch_model.bin"):
        (tmp_path / "pickled" / name).write_text("{}")
    with pytest.raises(UserError, match="pickle"):
        check_model(str(tmp_path / "pickled"))
