"""``adapler rationales``: the rationale check of spec section 7 on ERASER Movie Reviews.

Wired into the CLI by ``cli/main.py`` (``add_rationales_command(sub)`` in ``build_parser``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adapler_cli.errors import UserError
from adapler_cli.models import add_model_arguments, load_model

DESCRIPTION = """\
Per layer, the false positive rate (FPR) of the tokens an AdapLeR model keeps against the human
rationales of ERASER Movie Reviews, next to raw attention ([CLS] row, mean over heads),
attention rollout and gradient saliency, each picking the same number of tokens per window
and layer.

Documents are cut into windows of whole words (--window word pieces with [CLS]/[SEP]); with
--stride smaller than a window they overlap, and each word is scored in the one window where it
has the most context. Windows without rationale are dropped. [CLS], [SEP] and padding are not
counted. FPR = selected tokens outside the rationale / tokens outside the rationale, pooled over
all windows. The 'kept' column is the share of counted tokens each method selects.
"""


def add_rationales_command(subparsers) -> argparse.ArgumentParser:
    from adapler.eraser import HUB_NAME, SPLITS

    r = subparsers.add_parser(
        "rationales",
        help="per-layer false positive rate of kept tokens vs human rationales (ERASER movies)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(r)
    r.add_argument(
        "--data",
        default=HUB_NAME,
        help=f"ERASER directory (docs/ and <split>.jsonl) or the hub name {HUB_NAME} (default; needs network)",
    )
    r.add_argument("--split", default="test", choices=SPLITS)
    r.add_argument(
        "--window", type=int, help="word pieces per window, special tokens included (default: the model's max length)"
    )
    r.add_argument(
        "--stride", type=int, help="word pieces between window starts (default: the window's text length, no overlap)"
    )
    r.add_argument("--limit", type=int, help="only the first N documents of the split")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--device", default="cpu")
    r.add_argument("--output", help="also write the JSON report to this file")
    r.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    r.set_defaults(func=run_rationales)
    return r


def _window(args: argparse.Namespace, model) -> int:
    longest = min(model.tokenizer.model_max_length, model.config.max_position_embeddings)
    window = args.window or longest
    specials = model.tokenizer.num_special_tokens_to_add(pair=False)
    if not specials < window <= longest:
        raise UserError(f"--window must be in [{specials + 1}, {longest}] for this model, got {window}")
    if args.stride is not None and args.stride < 1:
        raise UserError(f"--stride must be at least 1, got {args.stride}")
    return window


def run_rationales(args: argparse.Namespace) -> None:
    from adapler.eraser import load_rationale_documents
    from adapler.rationales import evaluate_rationales

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    documents = load_rationale_documents(args.data, args.split)[: args.limit]
    model = load_model(args.model, args.device, tracking_uri=args.tracking_uri)
    window = _window(args, model)
    report = evaluate_rationales(model, documents, window, args.stride, args.batch_size, progress=True)
    result = {"data": args.data, "split": args.split, "window": window, "stride": args.stride, **report.to_dict()}
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{args.data} {args.split}: {report.documents} documents, {report.windows} windows of {window} "
        f"word pieces ({report.windows_dropped} without rationale dropped), {report.evaluated_tokens} "
        f"tokens counted, {report.rationale_tokens} in the rationale"
    )
    print("false positive rate per layer (lower is better):")
    print(report.table())
