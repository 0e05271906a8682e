"""The artefact rules (adapler/artifacts.py): what a model directory is, the name rule, model URIs."""

from __future__ import annotations

import shutil

import pytest

from adapler.artifacts import (
    ArtifactError,
    check_model_dir,
    find_model_dir,
    model_uri,
    parse_model_uri,
    registered_model_name,
)
from adapler.config import load_config


def test_registered_model_name_comes_from_the_run_name():
    assert registered_model_name("demo") == "adapler-demo"
    assert registered_model_name("rotten_tomatoes") == "adapler-rotten_tomatoes"
    assert registered_model_name("nyu-mll/glue sst2") == "adapler-nyu-mll-glue-sst2"
    # two runs on different files (both data.source=files) do not share a champion
    first = load_config(None, ["name=reviews", "data.source=files"])
    second = load_config(None, ["name=tickets", "data.source=files"])
    assert registered_model_name(first.name) != registered_model_name(second.name)
    with pytest.raises(ValueError, match="no registered-model name"):
        registered_model_name("//")


def test_model_uri_round_trip_and_errors():
    assert parse_model_uri(model_uri("adapler-demo")) == ("adapler-demo", "champion")
    assert parse_model_uri("models:/adapler-demo@challenger") == ("adapler-demo", "challenger")
    for bad in ("models:/adapler-demo", "models:/@champion", "models:/a/b@c", "runs/demo/model@x"):
        with pytest.raises(ValueError, match="is not models:/<name>@<alias>"):
            parse_model_uri(bad)


@pytest.fixture
def saved(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_check_model_dir(saved, tmp_path):
    assert check_model_dir(saved) == saved
    with pytest.raises(ArtifactError, match="model directory not found"):
        check_model_dir(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    shutil.copytree(saved, partial)
    (partial / "adapler.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing adapler.safetensors"):
        check_model_dir(partial)
    pickled = tmp_path / "pickled"
    shutil.copytree(saved, pickled)
    (pickled / "sub").mkdir()
    (pickled / "sub" / "optimizer.pt").write_bytes(b"\x80\x04N.")
    with pytest.raises(ArtifactError, match=r"pickle-format files \['optimizer.pt'\]"):
        check_model_dir(pickled)


def test_find_model_dir_takes_a_run_directory(saved, tmp_path):
    assert find_model_dir(saved) == saved
    assert find_model_dir(tmp_path) == saved  # a run directory: its model/
    with pytest.raises(ArtifactError, match="model directory not found"):
        find_model_dir(tmp_path / "runs" / "demo")
