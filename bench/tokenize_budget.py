"""Tokenizing only what the input budget reaches (adapler.batching.budget_prefix): time per BBC
News article, whole text vs cut text, at several budgets, in one run.

The fast tokenizer's cost grows with the text's length, not with the tokens kept: a 64-token model
reading a 400-word article used to pay for all 400 words. Both sides run the same
adapler.batching.token_counts call (the cut switched off for "whole"), interleaved, best of
--repeats; the tokens must agree or the script stops. Writes bench/results/tokenize_budget.json.

    python bench/tokenize_budget.py
    python bench/tokenize_budget.py --max-lengths 32 64 512 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from unittest import mock

from transformers import AutoTokenizer

from adapler import batching
from adapler.config import default_backbone
from adapler.data import load_splits


def seconds(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-lengths", type=int, nargs="+", default=[32, 64, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="texts per tokenizer call, as inference batches")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "tokenize_budget.json"))
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    texts = load_splits("bbc_news").test["text"].tolist()
    chunks = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]

    def tokenize(max_length: int) -> list[int]:
        return [n for chunk in chunks for n in batching.token_counts(tokenizer, chunk, None, max_length)]

    print(
        f"{len(texts)} BBC News test articles, {sum(map(len, texts)) / len(texts):.0f} characters on average, "
        f"batches of {args.batch_size}, best of {args.repeats}"
    )
    records = []
    print(f"{'max_length':>10} {'whole ms/article':>17} {'cut ms/article':>15} {'ratio':>6}")
    for max_length in args.max_lengths:
        whole_text = mock.patch.object(batching, "_splits_at_spaces", lambda tokenizer: False)
        with whole_text:
            expected = tokenize(max_length)
        assert tokenize(max_length) == expected, "the cut changed the tokens"
        whole, cut = [], []
        for _ in range(args.repeats):  # interleaved: a busy machine slows both sides alike
            with whole_text:
                whole.append(seconds(lambda n=max_length: tokenize(n)))
            cut.append(seconds(lambda n=max_length: tokenize(n)))
        whole, cut = min(whole), min(cut)
        records.append(
            {
                "dataset": "bbc_news",
                "split": "test",
                "texts": len(texts),
                "max_length": max_length,
                "batch_size": args.batch_size,
                "whole_ms_per_text": 1e3 * whole / len(texts),
                "cut_ms_per_text": 1e3 * cut / len(texts),
                "ratio": whole / cut,
                "repeats": args.repeats,
                "date": time.strftime("%Y-%m-%d"),
            }
        )
        print(
            f"{max_length:>10} {1e3 * whole / len(texts):>17.3f} {1e3 * cut / len(texts):>15.3f} {whole / cut:>5.1f}x"
        )
    Path(args.output).write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
