"""adapler's packed removal on every encoder family at its base size, against the family's own
Hugging Face forward.

One run, 2 threads (torch intra-op; ONNX Runtime intra-op), the packaged BBC News test articles
cut at --max-length tokens (256 by default: every article is longer, so each input is 256 tokens
and the FLOPs that removal saves are those of long inputs), length-sorted batches tokenized before
any clock starts, engines timed interleaved (bench/harness.py) by adapler.evaluate.timed_pass.

Models: random weights at each family's base size (bert-base, distilbert-base, electra-base,
deberta-v3-base, modernbert-base shapes), the packaged MiniLM tokenizer's vocabulary (30522) for
all of them: the vocabulary size does not change the time of a forward (DeBERTa-v3's is 128100).
Retention is set by construction, not learned: the CPs are random (PyTorch's default Linear init,
so their scores spread), and each eta is fitted in one packed pass over the first batch so that
layer l keeps --share of the tokens entering it (about share^l of the input). The FLOPs speedup of
each row is measured from the tokens that were really kept.

  baseline                the family's own forward (removal "none": SDPA, eager for DeBERTa;
                          ModernBERT's padded path, its unpadded one needs flash-attn, not on CPU);
                          on ONNX Runtime, the same exported graphs with removal off at the same
                          precision (every ratio is against the same engine; the torch forward's
                          figure stays in torch_hf_texts_per_s)
  adapler                 packed removal, on --runtime (torch, or ONNX Runtime fp32 / int8)
  adapler-no-pruning      the same code with every eta at 0: nothing leaves

    python bench/backbones.py                      # torch
    python bench/backbones.py --runtime onnx --quantize none int8
Each run adds its records to bench/results/backbones.json (those of the same family, runtime and
quantize are replaced): {family, runtime, quantize, batch_size, engine, texts_per_s,
flops_speedup, baseline_texts_per_s, speedup, realization (speedup / flops_speedup), ...}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
)

from adapler.backbones import encoder_size, family_class
from adapler.batching import sorted_batches
from adapler.calibration import scaled_etas
from adapler.config import default_backbone
from adapler.data import load_splits
from adapler.evaluate import TimedPass, timed_pass
from adapler.flops import flops_speedup
from adapler.inference import load_for_inference
from adapler.modeling import AdapLeRForSequenceClassification
from harness import CACHE, RESULTS, interleaved

LABELS = 5  # BBC News topics
BASE = {
    "num_labels": LABELS,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
MINILM_IDS = {"pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102, "cls_token_id": 101, "sep_token_id": 102}
DEBERTA_V3 = {  # deberta-v3-base's attention: log buckets, shared key projections, no absolute positions
    "relative_attention": True,
    "position_buckets": 256,
    "max_relative_positions": -1,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": "p2c|c2p",
    "position_biased_input": False,
    "type_vocab_size": 0,
}
MODERNBERT_BASE = {**BASE, "num_hidden_layers": 22, "intermediate_size": 1152, "local_attention": 128}
BASE_SIZES = {  # name -> (classifier class, config) at the family's base size
    "bert": (BertForSequenceClassification, lambda vocab: BertConfig(vocab_size=vocab, **BASE)),
    "distilbert": (
        DistilBertForSequenceClassification,
        lambda vocab: DistilBertConfig(vocab_size=vocab, num_labels=LABELS),
    ),
    "electra": (
        ElectraForSequenceClassification,
        lambda vocab: ElectraConfig(vocab_size=vocab, embedding_size=768, **BASE),
    ),
    "deberta-v3": (
        DebertaV2ForSequenceClassification,
        lambda vocab: DebertaV2Config(vocab_size=vocab, max_position_embeddings=512, **BASE, **DEBERTA_V3),
    ),
    "modernbert": (
        ModernBertForSequenceClassification,
        lambda vocab: ModernBertConfig(vocab_size=vocab, global_attn_every_n_layers=3, **MODERNBERT_BASE, **MINILM_IDS),
    ),
}


def base_model(family: str, tokenizer) -> AdapLeRForSequenceClassification:
    """The family at its base size, random (seeded) weights, loaded as from_pretrained loads it."""
    torch.manual_seed(0)
    classifier, config = BASE_SIZES[family]
    backbone = classifier(config(tokenizer.vocab_size))
    backbone.set_attn_implementation(family_class(backbone.config).attn_implementation)
    model = AdapLeRForSequenceClassification(backbone, tokenizer=tokenizer)
    for predictor in model.predictors:  # PyTorch's default Linear init: scores that spread
        for module in predictor.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
    return model.eval()


@torch.no_grad()
def fit_etas(model: AdapLeRForSequenceClassification, batch: dict, share: float) -> None:
    """Set each eta, layer by layer in one packed pass, so that the layer keeps ``share`` of the
    tokens entering it: a token stays iff n * softmax score >= eta, so eta is the (1 - share)
    quantile of n * score over the batch's tokens ([CLS] always stays)."""
    cut = model._hard_keep

    def fitted(index, z, present, factors):
        scores = torch.softmax(z.masked_fill(~present, float("-inf")), dim=-1) * present.sum(-1, keepdim=True)
        candidates = scores[:, 1:][present[:, 1:]].double()
        model.etas.data[index] = torch.quantile(candidates, 1.0 - share).to(model.etas.dtype)
        return cut(index, z, present, factors)

    model._hard_keep = fitted
    try:
        model(**batch, removal="packed")
    finally:
        del model._hard_keep


class Engine:
    """One timed row: a model (torch or ONNX Runtime), the removal it runs, an eta factor."""

    def __init__(self, name: str, model, removal: str, factor: float = 1.0):
        self.name, self.model, self.removal, self.factor = name, model, removal, factor

    def run(self, batches: list[dict]) -> TimedPass:
        with scaled_etas(self.model, self.factor):
            return timed_pass(self.model, batches, self.removal)


def bench_family(family: str, args, tokenizer, texts: list[str]) -> list[dict]:
    model = base_model(family, tokenizer)
    size = encoder_size(model.config, model.settings.cp_hidden)
    batches = {
        bs: [b for _, b in sorted_batches(tokenizer, texts[:count], None, bs, args.max_length)]
        for bs, count in ((32, args.texts_batch32), (1, args.texts_batch1))
    }
    fit_etas(model, batches[32][0], args.share)
    etas = [round(float(eta), 3) for eta in model.etas.detach()]
    print(f"[{family}] etas fitted for a share of {args.share} per layer: {etas}", flush=True)
    engines = {"baseline": Engine("baseline", model, "none")}  # the family's own HF forward in torch
    for quantize in args.quantize:
        if args.runtime == "torch" and quantize == "none":
            pruned = model
        else:  # the saved model, loaded as adapler loads it (ONNX: exported once, cached by its weights)
            directory = CACHE / f"backbones-{family}"
            if not (directory / "config.json").is_file():
                model.save_pretrained(directory)
            pruned = load_for_inference(directory, args.runtime, "cpu", quantize, args.threads)
            # the same engine's plain backbone: the same graphs at the same precision, removal off
            engines[f"baseline-{quantize}"] = Engine("baseline", pruned, "none")
        engines[f"adapler-{quantize}"] = Engine("adapler", pruned, "packed")
        engines[f"adapler-no-pruning-{quantize}"] = Engine("adapler-no-pruning", pruned, "packed", factor=0.0)
    records = []
    for batch_size, timed_batches in batches.items():
        count = sum(len(b["input_ids"]) for b in timed_batches)
        lengths = torch.cat([b["attention_mask"].sum(-1) for b in timed_batches]).numpy()
        timed = interleaved({key: engine.run for key, engine in engines.items()}, timed_batches, args.repeats)
        torch_baseline = count / timed["baseline"][0]
        for key, engine in engines.items():
            if engine.name == "baseline":
                continue
            quantize = key.rsplit("-", 1)[1]
            baseline = count / timed.get(f"baseline-{quantize}", timed["baseline"])[0]  # same engine, same precision
            seconds, last = timed[key]
            speedup = flops_speedup(lengths, last.kept, size)
            record = {
                "family": family,
                "runtime": args.runtime,
                "quantize": quantize,
                "batch_size": batch_size,
                "engine": engine.name,
                "texts": count,
                "max_length": args.max_length,
                "texts_per_s": count / seconds,
                "flops_speedup": speedup,
                "baseline_texts_per_s": baseline,
                "torch_hf_texts_per_s": torch_baseline,
                "speedup": (count / seconds) / baseline,
                "realization": (count / seconds) / baseline / speedup,
                "mean_kept_per_layer": last.kept.mean(0).round(1).tolist(),
            }
            records.append(record)
            print(
                f"{family:11s} {args.runtime:5s} {record['quantize']:4s} bs={batch_size:<3d} {engine.name:19s}"
                f"{record['texts_per_s']:7.2f} texts/s  baseline {baseline:7.2f}  x{record['speedup']:5.2f}  "
                f"FLOPs x{speedup:5.2f}  realization {record['realization']:.2f}",
                flush=True,
            )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(BASE_SIZES), choices=list(BASE_SIZES))
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    parser.add_argument("--quantize", nargs="+", default=["none"], choices=["none", "int8"])
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--share", type=float, default=0.8, help="share of its input tokens each layer keeps")
    parser.add_argument("--texts-batch32", type=int, default=32)
    parser.add_argument("--texts-batch1", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per engine after the warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "backbones.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    texts = load_splits("bbc_news").test["text"].tolist()
    output = Path(args.output)
    for family in args.families:
        records = bench_family(family, args, tokenizer, texts)
        kept = json.loads(output.read_text()) if output.is_file() else []
        ran = {(r["family"], r["runtime"], r["quantize"]) for r in records}
        kept = [r for r in kept if (r["family"], r["runtime"], r["quantize"]) not in ran]
        output.write_text(json.dumps(kept + records, indent=2) + "\n")  # after each family: a cut run keeps its rows
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
