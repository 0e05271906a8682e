"""adapler.backbones.convert: the packaged MiniLM (a 6-layer BERT) in DistilBERT's and ELECTRA's
layouts computes the same hidden states as the original, and prunes like any family."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertModel, GPT2Config

from adapler.backbones import UnsupportedBackbone
from adapler.backbones.convert import LAYOUTS, convert_bert, main
from adapler.batching import encode
from adapler.config import default_backbone
from adapler.modeling import AdapLeRForSequenceClassification


@pytest.fixture(scope="module")
def minilm_bert():
    return BertModel.from_pretrained(default_backbone(), add_pooling_layer=False).eval()


@pytest.fixture(scope="module", params=LAYOUTS)
def mapped(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"minilm-{request.param}")
    return request.param, convert_bert(default_backbone(), directory, request.param)


def test_the_mapped_encoder_computes_the_original_hidden_states(mapped, minilm_bert, sentences):
    layout, directory = mapped
    model = AutoModel.from_pretrained(directory).eval()
    assert model.config.model_type == layout
    tokenizer = AutoTokenizer.from_pretrained(directory)
    batch = encode(tokenizer, sentences)  # padded, one segment
    if layout == "distilbert":
        assert "token_type_ids" not in tokenizer.model_input_names  # DistilBERT has no token types
    with torch.no_grad():
        expected = minilm_bert(
            **encode(AutoTokenizer.from_pretrained(default_backbone()), sentences), output_hidden_states=True
        ).hidden_states
        inputs = {k: v for k, v in batch.items() if k in tokenizer.model_input_names}
        got = model(**inputs, output_hidden_states=True).hidden_states
    present = batch["attention_mask"].bool()
    assert len(got) == len(expected) == 7  # embeddings + 6 layers
    for layer, (mine, theirs) in enumerate(zip(got, expected)):
        assert torch.allclose(mine[present], theirs[present], atol=1e-5), layer


def test_the_mapped_checkpoint_prunes_like_the_original(mapped, sentences):
    """AdapLeR from the mapped directory and from MiniLM, with the same CPs and etas: the same
    kept tokens at every layer, since every layer computes the same states."""
    layout, directory = mapped
    torch.manual_seed(0)
    original = AdapLeRForSequenceClassification.from_backbone(default_backbone(), num_labels=2).eval()
    model = AdapLeRForSequenceClassification.from_backbone(str(directory), num_labels=2).eval()
    assert model.config.model_type == layout
    for module in original.predictors.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=1.0)  # spread scores: tokens do leave
    model.predictors.load_state_dict(original.predictors.state_dict())
    model.etas.data = original.etas.detach().clone()
    batch = encode(model.tokenizer, sentences)
    with torch.no_grad():
        expected = original(**encode(original.tokenizer, sentences))
        got = model(**batch)
    assert torch.equal(expected.kept_mask, got.kept_mask)
    assert (got.kept_lengths[:, -1] < batch["attention_mask"].sum(-1)).any()


def test_only_bert_checkpoints_are_mapped(tmp_path):
    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedBackbone, match="only BERT"):
        convert_bert(tmp_path, tmp_path / "out", "distilbert")
    with pytest.raises(ValueError, match="layout"):
        convert_bert(default_backbone(), tmp_path / "out", "albert")


def test_command_line(tmp_path, capsys):
    main([default_backbone(), str(tmp_path / "electra"), "--layout", "electra"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "electra")
    assert AutoModel.from_pretrained(tmp_path / "electra").config.model_type == "electra"
