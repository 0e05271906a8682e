"""Map a BERT checkpoint into the DistilBERT or ELECTRA layout, with the same function.

DistilBERT's and ELECTRA's encoders are BERT's under other names (post-norm layers, absolute
position embeddings, LayerNorm eps 1e-12), so a trained BERT (e.g. the packaged MiniLM) becomes a
trained checkpoint of either family whose hidden states equal the original's: real weights to
check those families on, where none ships offline.

  distilbert  no token types: row 0 of BERT's token-type embeddings is folded into the word
              embeddings (BERT adds word + type + position in that order; DistilBERT then adds
              word' + position, the same sum), so inputs of one segment (type 0) compute exactly
              as before; a second segment loses its type. BERT's pooler is dropped (DistilBERT's
              classifier has its own pre_classifier, new when fine-tuned). The tokenizer is saved
              without token_type_ids among its model inputs.
  electra     the same names as BERT (embedding width = hidden width: no projection); the
              pooler is dropped (ELECTRA's classification head is its own).

    python -m adapler.backbones.convert SOURCE TARGET --layout distilbert
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
)

from adapler.backbones.base import UnsupportedBackbone

LAYOUTS = ("distilbert", "electra")
DISTILBERT_LAYER_NORM_EPS = 1e-12  # fixed in DistilBERT's modules (not a config field)


def convert_bert(source: str | Path, target: str | Path, layout: str) -> Path:
    """Write ``source`` (a BERT checkpoint directory or hub id, with its tokenizer) to ``target``
    in ``layout`` ("distilbert" or "electra"): a base encoder (no head) plus the tokenizer."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    config = AutoConfig.from_pretrained(source)
    if config.model_type != "bert":
        raise UnsupportedBackbone(f"only BERT checkpoints are mapped, got model_type {config.model_type!r}")
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise UnsupportedBackbone("only BERT checkpoints with absolute position embeddings are mapped")
    bert = BertModel.from_pretrained(source, add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if layout == "distilbert":
        model = _to_distilbert(bert)
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
        tokenizer.init_kwargs["model_input_names"] = tokenizer.model_input_names  # saved in tokenizer_config.json
    else:
        model = _to_electra(bert)
    target = Path(target)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def _to_distilbert(bert: BertModel) -> DistilBertModel:
    config = bert.config
    if config.layer_norm_eps != DISTILBERT_LAYER_NORM_EPS:
        raise UnsupportedBackbone(
            f"DistilBERT's LayerNorms use eps {DISTILBERT_LAYER_NORM_EPS}; this BERT uses {config.layer_norm_eps}"
        )
    target = DistilBertConfig(
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        sinusoidal_pos_embds=False,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        dim=config.hidden_size,
        hidden_dim=config.intermediate_size,
        dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
        activation=config.hidden_act,
        initializer_range=config.initializer_range,
        pad_token_id=config.pad_token_id,
    )
    source = bert.state_dict()
    state = {
        "embeddings.word_embeddings.weight": source["embeddings.word_embeddings.weight"]
        + source["embeddings.token_type_embeddings.weight"][0],
        "embeddings.position_embeddings.weight": source["embeddings.position_embeddings.weight"],
        "embeddings.LayerNorm.weight": source["embeddings.LayerNorm.weight"],
        "embeddings.LayerNorm.bias": source["embeddings.LayerNorm.bias"],
    }
    names = {  # DistilBERT layer module <- BERT layer module
        "attention.q_lin": "attention.self.query",
        "attention.k_lin": "attention.self.key",
        "attention.v_lin": "attention.self.value",
        "attention.out_lin": "attention.output.dense",
        "sa_layer_norm": "attention.output.LayerNorm",
        "ffn.lin1": "intermediate.dense",
        "ffn.lin2": "output.dense",
        "output_layer_norm": "output.LayerNorm",
    }
    for index in range(config.num_hidden_layers):
        for mine, theirs in names.items():
            for param in ("weight", "bias"):
                state[f"transformer.layer.{index}.{mine}.{param}"] = source[f"encoder.layer.{index}.{theirs}.{param}"]
    return _load(DistilBertModel(target), state)


def _to_electra(bert: BertModel) -> ElectraModel:
    config = bert.config
    target = ElectraConfig(
        vocab_size=config.vocab_size,
        embedding_size=config.hidden_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
        pad_token_id=config.pad_token_id,
        position_embedding_type="absolute",
    )
    return _load(ElectraModel(target), dict(bert.state_dict()))  # the same module names


def _load(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Every weight of ``model`` from ``state`` (buffers such as position_ids keep their own)."""
    expected = dict(model.named_parameters())
    missing = sorted(set(expected) - set(state))
    if missing:
        raise AssertionError(f"the mapping leaves {missing} unset")
    with torch.no_grad():
        for name, parameter in expected.items():
            parameter.copy_(state[name])
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a BERT checkpoint directory (or hub id) with its tokenizer")
    parser.add_argument("target", help="the directory to write")
    parser.add_argument("--layout", choices=LAYOUTS, required=True)
    args = parser.parse_args(argv)
    print(convert_bert(args.source, args.target, args.layout))


if __name__ == "__main__":
    main()
