"""ONNX Runtime path: export, parity with the torch packed path, per-example factors, int8, cache."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from adapler.artifacts import ArtifactError
from adapler.batching import encode
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.onnx_export import (
    MANIFEST,
    ONNX_SUBDIR,
    UnsupportedExport,
    check_exportable,
    ensure_export,
    export_model_dir,
)
from adapler.onnx_runtime import OnnxAdapLeR, RuntimeUnavailable, providers_for
from adapler.quantization import quantize_int8


@pytest.fixture(scope="module")
def pruning_model(tiny_model_factory):
    model = tiny_model_factory(num_labels=2)
    model.etas.data = torch.tensor([0.9, 1.1, 1.0])  # each layer removes some tokens of these sentences
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, pruning_model):
    directory = tmp_path_factory.mktemp("onnx-model")
    pruning_model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def onnx_model(model_dir):
    return OnnxAdapLeR.from_pretrained(model_dir)  # exported into the session's cache (conftest)


def assert_same(torch_out, onnx_out, atol=1e-4):
    assert torch.equal(torch_out.kept_mask, onnx_out.kept_mask)
    assert torch.equal(torch_out.kept_lengths, onnx_out.kept_lengths)
    assert torch.allclose(torch_out.logits, onnx_out.logits, atol=atol)


@pytest.mark.parametrize("removal", ["packed", "none"])
def test_same_kept_masks_and_logits_as_torch(pruning_model, onnx_model, tokenizer, removal, sentences):
    batch = encode(tokenizer, sentences)
    with torch.no_grad():
        expected = pruning_model(**batch, removal=removal)
    got = onnx_model(**batch, removal=removal)
    assert_same(expected, got)
    if removal == "packed":  # the test means something: tokens did leave, differently per example
        lengths = expected.kept_lengths[:, -1]
        assert (lengths < batch["attention_mask"].sum(-1)).all() and len(set(lengths.tolist())) > 1


def test_removal_layers_of_a_bert_family_run_the_fused_attention_kernel(onnx_model):
    """The removal graph's attention is ONNX Runtime's own kernel (the one the backbone graph
    fuses into), not the unfused MatMul/Softmax pattern: the gain on short texts."""
    import onnx

    for name in ("adapler", "adapler_single", "backbone"):
        ops = [node.op_type for node in onnx.load(str(onnx_model.graphs.path(name))).graph.node]
        assert ops.count("Attention") == onnx_model.num_layers, name


def test_an_example_in_a_mixed_batch_equals_itself_alone(onnx_model, tokenizer, sentences):
    batch = onnx_model(**encode(tokenizer, sentences))
    for row, sentence in enumerate(sentences):
        alone = onnx_model(**encode(tokenizer, [sentence]))
        n = alone.kept_mask.shape[-1]
        assert torch.equal(batch.kept_mask[row, :, :n], alone.kept_mask[0])
        assert not batch.kept_mask[row, :, n:].any()
        assert torch.allclose(batch.logits[row], alone.logits[0], atol=1e-5)


def test_batches_run_side_by_side_equal_each_batch_alone(model_dir, tokenizer, sentences, monkeypatch):
    """forward_batches: the small batches run side by side on single-thread sessions, the large
    ones on every thread, and each output is that batch's forward alone, in the order given."""
    import adapler.onnx_runtime as onnx_runtime

    model = OnnxAdapLeR.from_pretrained(model_dir, threads=2)
    singles = [encode(tokenizer, [sentence]) for sentence in sentences]
    everything = encode(tokenizer, sentences)
    widest = max(batch["input_ids"].shape[1] for batch in singles)
    monkeypatch.setattr(onnx_runtime, "SIDE_BY_SIDE_TOKENS", widest)  # the batch of all five is large
    assert not onnx_runtime.runs_side_by_side(tuple(everything["input_ids"].shape))
    calls = [
        *({**batch, "removal": "packed"} for batch in singles),
        {**everything, "removal": "packed", "eta_factors": torch.tensor([0.5, 1.0, 2.0, 1.5, 0.8])},
        {**singles[0], "removal": "none"},
    ]
    outputs = model.forward_batches(calls)
    assert set(model._single) == {"adapler_single", "backbone"}  # small ones ran on single-thread sessions
    assert len(outputs) == len(calls)
    for call, got in zip(calls, outputs):
        assert_same(model(**call), got, atol=1e-6)
    alone = OnnxAdapLeR.from_pretrained(model_dir, threads=1)
    alone.forward_batches(calls)
    assert not alone._single  # one thread: nothing runs side by side, no second session


def test_per_example_factors_equal_scaled_etas_alone(onnx_model, tokenizer, sentences):
    factors = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.8])
    batch = onnx_model(**encode(tokenizer, sentences), eta_factors=factors)
    etas = onnx_model.etas.detach().clone()
    for row, sentence in enumerate(sentences):
        onnx_model.etas.data = etas * factors[row]
        try:
            alone = onnx_model(**encode(tokenizer, [sentence]))
        finally:
            onnx_model.etas.data = etas
        n = alone.kept_mask.shape[-1]
        assert torch.equal(batch.kept_mask[row, :, :n], alone.kept_mask[0])
        assert torch.allclose(batch.logits[row], alone.logits[0], atol=1e-5)
    assert batch.kept_lengths[2, -1] <= onnx_model(**encode(tokenizer, [sentences[2]])).kept_lengths[0, -1]


def test_int8_keeps_within_one_token_of_fp32(model_dir, onnx_model, tokenizer, sentences):
    int8 = OnnxAdapLeR.from_pretrained(model_dir, quantize="int8")
    batch = encode(tokenizer, sentences)
    fp32, quantized = onnx_model(**batch), int8(**batch)
    assert (fp32.kept_lengths - quantized.kept_lengths).abs().max() <= 1
    assert torch.equal(fp32.logits.argmax(-1), quantized.logits.argmax(-1))
    assert not torch.allclose(fp32.logits, quantized.logits, atol=1e-7)  # it really is another graph


def test_int8_export_logs_no_quantizer_dumps(pruning_model, tmp_path, caplog):
    """ONNX Runtime's quantizer warns on the root logger, one multi-line dump per index tensor of
    the removal graph: nothing a user can act on, so an export does not show it."""
    import logging

    from adapler.onnx_export import export_graphs

    with caplog.at_level(logging.WARNING):
        graphs = export_graphs(pruning_model, tmp_path / "export", "int8")
        assert logging.getLogger().level == logging.WARNING  # the level is given back
    assert graphs.path("adapler").is_file()
    warned = [r.getMessage()[:80] for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warned, warned


def test_export_is_cached_by_weights(model_dir, pruning_model, onnx_model, tmp_path, monkeypatch):
    import adapler.onnx_export as onnx_export

    exports = []
    real = onnx_export.export_graphs
    monkeypatch.setattr(onnx_export, "export_graphs", lambda *a, **k: exports.append(1) or real(*a, **k))
    first = ensure_export(model_dir)  # exported by the onnx_model fixture already
    assert exports == [] and json.loads((first.directory / MANIFEST).read_text())["num_layers"] == 3
    pruning_model.etas.data *= 2  # etas are outside the graphs: same export
    pruning_model.save_pretrained(tmp_path / "etas")
    assert ensure_export(tmp_path / "etas").directory == first.directory and exports == []
    changed = AdapLeRForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        changed.backbone.classifier.weight.add_(0.1)
    changed.save_pretrained(tmp_path / "changed")
    assert ensure_export(tmp_path / "changed").directory != first.directory and exports == [1]


def test_a_model_dir_carries_its_own_export(model_dir, tmp_path, tokenizer, sentences):
    output = tmp_path / "exported"
    export_model_dir(model_dir, output, quantize="int8")
    assert (output / ONNX_SUBDIR / "adapler.int8.onnx").is_file()
    assert ensure_export(output).directory == output / ONNX_SUBDIR
    loaded = OnnxAdapLeR.from_pretrained(output, quantize="int8")
    assert loaded.graphs.directory == output / ONNX_SUBDIR
    fp32_only = tmp_path / "fp32-only"
    export_model_dir(model_dir, fp32_only, quantize="none")
    assert ensure_export(fp32_only, "int8").directory != fp32_only / ONNX_SUBDIR  # int8 made in the cache,
    assert not list((fp32_only / ONNX_SUBDIR).glob("*.int8.onnx"))  # a model's own folder is not written to
    assert loaded(**encode(tokenizer, sentences[:2])).logits.shape == (2, 2)


def test_roberta_style_backbone_exports(tokenizer, tmp_path, sentences, spread_cps):
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=2,
        pad_token_id=0,
        max_position_embeddings=80,
    )
    model = AdapLeRForSequenceClassification(RobertaForSequenceClassification(config), tokenizer=tokenizer).eval()
    spread_cps(model)
    model.save_pretrained(tmp_path / "roberta")
    batch = encode(tokenizer, sentences)
    with torch.no_grad():
        expected = model(**batch)
    assert_same(expected, OnnxAdapLeR.from_pretrained(tmp_path / "roberta")(**batch))


def test_clear_errors(model_dir, tmp_path, pruning_model):
    with pytest.raises(ArtifactError, match="missing model.safetensors"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text("{}")
        OnnxAdapLeR.from_pretrained(tmp_path / "empty")
    with pytest.raises(UnsupportedExport, match="float model"):
        check_exportable(quantize_int8(pruning_model))
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(RuntimeUnavailable, match="no CUDAExecutionProvider"):
            providers_for("cuda")
    with pytest.raises(RuntimeUnavailable, match="'packed' or 'none'"):
        OnnxAdapLeR.from_pretrained(model_dir)(torch.ones(1, 3, dtype=torch.long), removal="masked")


@pytest.mark.slow
def test_packaged_minilm_matches_torch(tokenizer, tmp_path, sentences, spread_cps):
    from adapler.config import default_backbone

    torch.manual_seed(0)
    model = AdapLeRForSequenceClassification.from_backbone(default_backbone(), num_labels=2).eval()
    spread_cps(model)
    model.etas.data.fill_(1.0)
    model.save_pretrained(tmp_path / "minilm")
    batch = encode(tokenizer, sentences)
    with torch.no_grad():
        expected = {removal: model(**batch, removal=removal) for removal in ("packed", "none")}
    onnx_model = OnnxAdapLeR.from_pretrained(tmp_path / "minilm")
    for removal, out in expected.items():
        assert_same(out, onnx_model(**batch, removal=removal))
    assert (expected["packed"].kept_lengths[:, -1] < batch["attention_mask"].sum(-1)).all()
    int8 = OnnxAdapLeR.from_pretrained(tmp_path / "minilm", quantize="int8")(**batch)
    # per layer, the mean kept count of int8 within one token of fp32 (random CPs are sharper
    # than trained ones: one example may move by more; bench/runtime.py reports trained models)
    difference = (int8.kept_lengths - expected["packed"].kept_lengths).float().mean(0).abs()
    assert difference.max() <= 1.0
