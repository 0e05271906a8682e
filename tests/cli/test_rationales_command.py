"""`adapler rationales` end to end on the ERASER fixture with a tiny saved model, and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapler_cli.main import main

FIXTURE = Path(__file__).parents[1] / "fixtures" / "eraser"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model_factory):
    model = tiny_model_factory(num_labels=2, eta_init=1.0)  # drops about half the tokens per layer
    directory = tmp_path_factory.mktemp("rationales-model")
    model.save_pretrained(directory)
    return str(directory)


def test_prints_a_layer_by_method_table(model_dir, capsys):
    assert main(["rationales", "--model", model_dir, "--data", str(FIXTURE), "--window", "32"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "4 documents, 4 windows of 32 word pieces (2 without rationale dropped)" in out[0]
    assert "77 tokens counted, 46 in the rationale" in out[0]
    header = out.index(next(line for line in out if line.split()[:2] == ["layer", "kept"]))
    assert out[header].split() == ["layer", "kept", "adapler", "attention", "rollout", "saliency"]
    rows = [line.split() for line in out[header + 1 :]]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert all(0.0 <= float(value) <= 1.0 for row in rows for value in row[1:])


def test_json_report_and_output_file(model_dir, tmp_path, capsys):
    output = tmp_path / "rationales.json"
    argv = [
        "rationales",
        "--model",
        model_dir,
        "--data",
        str(FIXTURE),
        "--window",
        "16",
        "--stride",
        "8",
        "--limit",
        "3",
        "--json",
        "--output",
        str(output),
    ]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(output.read_text())
    assert (printed["window"], printed["stride"], printed["split"]) == (16, 8, "test")
    assert printed["documents"] == 3  # --limit 3 leaves out negR_007
    # overlapping windows count each rationale token once (46, as without overlap); of posR_001
    # only the 29 words owned by its last four windows count, the other windows hold no evidence
    assert (printed["evaluated_tokens"], printed["rationale_tokens"]) == (29 + 28 + 15, 46)
    assert set(printed["fpr"]) == {"adapler", "attention", "rollout", "saliency"}
    negatives = printed["evaluated_tokens"] - printed["rationale_tokens"]
    assert printed["fpr"]["rollout"] == [fp / negatives for fp in printed["false_positives"]["rollout"]]


def test_help_describes_the_measure(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["rationales", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "false positive rate" in out and "--stride" in out and "[SEP]" in out


def _broken_fixture(tmp_path: Path, kind: str) -> str:
    target = tmp_path / "eraser"
    shutil.copytree(FIXTURE, target)
    if kind == "missing-doc":
        (target / "docs" / "posR_003.txt").unlink()
    elif kind == "no-rationale":
        path = target / "test.jsonl"
        path.write_text(path.read_text().splitlines()[-1] + "\n")  # negR_007 alone: no evidence
    elif kind == "span-outside":
        path = target / "test.jsonl"
        path.write_text(path.read_text().replace('"end_token": 17', '"end_token": 99'))
    return str(target)


@pytest.mark.parametrize(
    "data, extra, message",
    [
        ("{tmp}/no-such-dir", [], "data not found"),
        ("missing-doc", [], "document file not found"),
        ("span-outside", [], "evidence span [13, 99) is outside document negR_002.txt (24 tokens)"),
        ("no-rationale", [], "none of the 1 documents has a window with rationale"),
        ("ok", ["--window", "2"], "--window must be in [3, "),
        ("ok", ["--stride", "0"], "--stride must be at least 1"),
    ],
)
def test_errors_are_one_line_and_exit_2(model_dir, tmp_path, capsys, data, extra, message):
    if not data.startswith("{tmp}"):
        data = _broken_fixture(tmp_path, data)
    argv = ["rationales", "--model", model_dir, "--data", data.replace("{tmp}", str(tmp_path)), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "adapler: error:" in err and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
