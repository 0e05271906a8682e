"""Saliency labels on Ray Data: the Contribution Predictors' targets (spec section 2), at scale.

One pass of ``ray.data`` over the training rows, an actor pool of :class:`SaliencyLabeler` (each
actor loads the stage-1 checkpoints once) computing ``adapler.saliency.saliency_for_rows`` per
checkpoint and averaging them. The result is a Parquet directory keyed by example id (columns
``id: string``, ``saliency: list<float32>``, one value per unpadded token), never by position.

Resumable: the output directory is named after a fingerprint of its inputs (rows, checkpoint
weights, max_length) and carries a ``_SUCCESS`` marker and a ``manifest.json``. A second run
with the same inputs finds the marker and reuses the result. Checkpoints and output are
locations (pipelines/storage.py): a local output is written to a temporary directory and renamed
into place; object storage (``s3://...``), which has no rename, is written in place with the
marker last (readers trust a directory only with its marker). The actors read the checkpoints
from their location, so they may run on any node.

:func:`load_saliency` reads a result back and checks it against the rows it is meant for: every
row's id present exactly once, with one value per token under the given tokenizer and max_length;
anything else is a :class:`adapler.batching.SaliencyMismatch`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from adapler.batching import SaliencyMismatch, token_counts
from adapler_pipelines import storage

log = logging.getLogger(__name__)

SUCCESS_MARKER = "_SUCCESS"
MANIFEST = "manifest.json"
# Bump when the meaning or layout of the stored labels changes, so that old results are not reused.
_FORMAT_VERSION = "adapler-saliency-v1"
# Tokenizer files that decide the token count (and so each label vector's length).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_ROW_COLUMNS = ("id", "text", "text_pair", "label")
# What the stage writes. The UDF hands Ray lists of floats (stored as doubles by default): the
# schema casts them back to float32 at write time, half the size, and exactly the computed values.
SCHEMA = pa.schema([("id", pa.string()), ("saliency", pa.list_(pa.float32()))])


# ---------------------------------------------------------------------------------- Ray Data UDF


def _actor_cpus(default: int = 1) -> int:
    """CPUs Ray assigned to this actor/task (``num_cpus``), or ``default`` outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                return max(1, int(cpus))
    except Exception:  # not in a Ray worker, or an older runtime context API
        pass
    return default


class SaliencyLabeler:
    """Callable class UDF for ``Dataset.map_batches``: loads the checkpoints once per actor.

    Input batches are dicts of column arrays (``id, text, text_pair, label``); the output has the
    columns ``id`` (str) and ``saliency`` (one float32 array per example, the mean over
    checkpoints of :func:`adapler.saliency.saliency_for_rows`).
    """

    def __init__(self, checkpoint_dirs: list[str], max_length: int, batch_size: int = 32, device: str = "cpu"):
        """checkpoint_dirs: locations (local or URI) of AdapLeR model directories."""
        import torch

        from adapler.modeling import AdapLeRForSequenceClassification

        if not checkpoint_dirs:
            raise ValueError("SaliencyLabeler needs at least one checkpoint directory")
        torch.set_num_threads(_actor_cpus(default=torch.get_num_threads()))
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.models = [
            AdapLeRForSequenceClassification.from_pretrained(storage.local_copy(directory)).to(device).eval()
            for directory in checkpoint_dirs
        ]

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray | list]:
        from adapler.saliency import average_saliency, saliency_for_rows

        columns = {k: list(batch[k]) for k in _ROW_COLUMNS if k in batch}
        columns["id"] = [str(i) for i in columns["id"]]
        maps = [saliency_for_rows(model, columns, self.max_length, self.batch_size) for model in self.models]
        averaged = average_saliency(maps)
        ids = columns["id"]
        # Lists of floats, not an object array of ndarrays: Ray would store variable-length
        # ndarrays as its own tensor extension type, which plain pyarrow readers cannot use.
        return {
            "id": np.asarray(ids, dtype=object),
            "saliency": [averaged[i].astype(np.float32).tolist() for i in ids],
        }


# ---------------------------------------------------------------------------------- fingerprint


def _update(h, value: bytes | str | None) -> None:
    """Length-prefixed field, so that ("ab", "c") and ("a", "bc") hash differently; None != ""."""
    if value is None:
        h.update(b"\xff" * 8)
        return
    data = value.encode("utf-8") if isinstance(value, str) else value
    h.update(struct.pack(">Q", len(data)))
    h.update(data)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checkpoint_digest(directory: str | Path) -> str:
    """Hash of a checkpoint's weight (and vocabulary) files by name inside the directory and
    content: a moved or copied checkpoint gives the same digest."""
    directory = Path(directory)
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{directory} has no *.safetensors weight files")
    h = hashlib.sha256()
    for path in weights + [directory / name for name in _TOKENIZER_FILES if (directory / name).is_file()]:
        _update(h, path.name)
        _update(h, _file_digest(path))
    return h.hexdigest()


def _normalise_rows(rows: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("id", "text", "label") if c not in rows]
    if missing:
        raise ValueError(f"rows need the columns id, text, label (missing: {', '.join(missing)})")
    frame = pd.DataFrame(
        {
            "id": rows["id"].astype(str).tolist(),
            "text": rows["text"].tolist(),
            "text_pair": pd.Series(
                rows["text_pair"].tolist() if "text_pair" in rows else [None] * len(rows), dtype=object
            ),
            "label": pd.Series(rows["label"].to_numpy(dtype=np.int64), dtype="int64"),
        }
    )
    frame["text_pair"] = [None if _is_missing(p) else p for p in frame["text_pair"]]
    duplicated = frame["id"][frame["id"].duplicated()].unique().tolist()
    if duplicated:
        raise ValueError(f"rows have duplicate ids (e.g. {duplicated[:3]}); saliency labels are keyed by id")
    return frame


def _is_missing(value) -> bool:
    """None, NaN, pd.NA: what pandas and Parquet make of a missing text_pair."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _hash_rows(h, rows: pd.DataFrame) -> None:
    frame = _normalise_rows(rows).sort_values("id", kind="stable")  # row order does not matter
    _update(h, f"rows:{len(frame)}")
    for example_id, text, pair, label in frame.itertuples(index=False, name=None):
        _update(h, example_id)
        _update(h, text)
        _update(h, pair)
        _update(h, str(int(label)))


def rows_fingerprint(rows: pd.DataFrame) -> str:
    """sha256 of the rows alone (ids, texts, labels; any order): names a data split, e.g. the
    test split a registered model was measured on."""
    h = hashlib.sha256()
    _hash_rows(h, rows)
    return h.hexdigest()


def fingerprint(rows: pd.DataFrame, checkpoint_dirs: Sequence[str | Path], max_length: int) -> str:
    """sha256 over the rows (sorted by id: row order does not matter), the checkpoints' weight
    files (contents, not paths; checkpoints are local directories) and max_length."""
    h = hashlib.sha256()
    _update(h, _FORMAT_VERSION)
    _hash_rows(h, rows)
    # The average over checkpoints does not depend on their order.
    digests = sorted(_checkpoint_digest(d) for d in checkpoint_dirs)
    _update(h, f"checkpoints:{len(digests)}")
    for digest in digests:
        _update(h, digest)
    _update(h, f"max_length:{int(max_length)}")
    return h.hexdigest()


# ---------------------------------------------------------------------------------- compute


def _split_rows(frame: pd.DataFrame, num_actors: int, batch_size: int) -> list[pd.DataFrame]:
    """One frame per block. A single block (what ``from_pandas`` makes of one frame) goes to a
    single actor, so split the rows: a few blocks per actor, at most ~2048 rows each, whole
    batches. (``from_pandas(override_num_blocks=...)`` fails in Ray 2.60 with pandas 3: it
    calls ``np.array_split`` on the frame, which now returns bare ndarrays.)"""
    batches = -(-len(frame) // batch_size)
    blocks = max(1, min(batches, max(4 * num_actors, -(-len(frame) // 2048))))
    rows_per_block = -(-batches // blocks) * batch_size
    return [frame.iloc[start : start + rows_per_block] for start in range(0, len(frame), rows_per_block)]


def compute_saliency(
    rows: pd.DataFrame,
    checkpoint_dirs: Sequence[str | Path],
    max_length: int,
    output_dir: str | Path,
    num_actors: int = 1,
    batch_size: int = 32,
    cpus_per_actor: float = 1,
    use_gpu: bool = False,
) -> str:
    """Saliency labels for ``rows`` averaged over ``checkpoint_dirs``, as a Parquet directory
    ``<output_dir>/saliency-<fingerprint[:16]>`` (its location); reused when it is already
    complete. Checkpoints and output are locations: local paths or URIs. use_gpu: one GPU per actor."""
    import ray.data

    num_actors, batch_size = int(num_actors), int(batch_size)
    if num_actors < 1 or batch_size < 1:
        raise ValueError(f"num_actors and batch_size must be positive, got {num_actors} and {batch_size}")
    if not checkpoint_dirs:
        raise ValueError("compute_saliency needs at least one checkpoint directory")
    checkpoint_dirs = [str(d) if storage.is_uri(d) else str(Path(d).resolve()) for d in checkpoint_dirs]
    frame = _normalise_rows(rows)
    if frame.empty:
        raise ValueError("compute_saliency got no rows")
    digest = fingerprint(frame, [storage.local_copy(d) for d in checkpoint_dirs], max_length)
    remote = storage.is_uri(output_dir)
    output_dir = str(output_dir) if remote else str(Path(output_dir).resolve())
    target = storage.join(output_dir, f"saliency-{digest[:16]}")
    if storage.exists(storage.join(target, SUCCESS_MARKER)):
        log.info("reusing saliency labels at %s (fingerprint %s, %d rows)", target, digest[:16], len(frame))
        return target

    if remote:  # no rename in object storage: write in place, the marker last
        storage.remove_tree(target)  # an incomplete earlier attempt
        staging = target
    else:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        staging = storage.join(output_dir, f".saliency-{digest[:16]}.tmp-{uuid.uuid4().hex[:8]}")
    log.info(
        "computing saliency labels for %d rows with %d checkpoint(s) on %d actor(s) -> %s",
        len(frame),
        len(checkpoint_dirs),
        num_actors,
        target,
    )
    try:
        dataset = ray.data.from_pandas(_split_rows(frame, num_actors, batch_size)).map_batches(
            SaliencyLabeler,
            fn_constructor_kwargs={
                "checkpoint_dirs": checkpoint_dirs,
                "max_length": int(max_length),
                "batch_size": int(batch_size),
                "device": "cuda" if use_gpu else "cpu",
            },
            batch_size=int(batch_size),
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=int(num_actors)),
            num_cpus=cpus_per_actor,
            num_gpus=1 if use_gpu else 0,
        )
        dataset.write_parquet(staging, schema=SCHEMA)
        written = _count_rows(staging)
        if written != len(frame):
            raise RuntimeError(f"saliency stage wrote {written} rows for {len(frame)} examples into {staging}")
        manifest = {
            "fingerprint": digest,
            "checkpoint_dirs": checkpoint_dirs,
            "max_length": int(max_length),
            "num_rows": len(frame),
            "format": _FORMAT_VERSION,
        }
        storage.write_text(storage.join(staging, MANIFEST), json.dumps(manifest, indent=2) + "\n")
        storage.write_text(storage.join(staging, SUCCESS_MARKER), "")
        if not remote:
            _rename_into_place(Path(staging), Path(target))
    finally:
        if not remote and Path(staging).exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _count_rows(location: str) -> int:
    files = storage.list_files(location, ".parquet")
    if not files:
        return 0
    handle, _ = storage.filesystem(location)
    return pq.read_table([storage.filesystem(f)[1] for f in files], columns=["id"], filesystem=handle).num_rows


def _rename_into_place(temporary: Path, target: Path) -> None:
    """Atomic: the target appears complete or not at all; another run's complete one is kept."""
    try:
        if target.exists() and not (target / SUCCESS_MARKER).is_file():
            shutil.rmtree(target)  # incomplete leftover, not ours to keep
        os.rename(temporary, target)
    except OSError:
        if not (target / SUCCESS_MARKER).is_file():
            raise
        log.info("another run finished %s first; reusing it", target)


# ---------------------------------------------------------------------------------- load / check


def _parquet_files(path: Path) -> list[str]:
    return [str(p) for p in sorted(path.glob("*.parquet"))]


def _token_counts(tokenizer, frame: pd.DataFrame, max_length: int, chunk: int = 4096) -> list[int]:
    """Unpadded token count per row, tokenized exactly as adapler.batching.encode does."""
    counts: list[int] = []
    for start in range(0, len(frame), chunk):
        part = frame.iloc[start : start + chunk]
        counts += token_counts(tokenizer, part["text"].tolist(), part["text_pair"].tolist(), max_length)
    return counts


def _first(items: list, n: int = 5) -> str:
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def load_saliency(path: str | Path, rows: pd.DataFrame, tokenizer, max_length: int) -> dict[str, np.ndarray]:
    """The saliency labels at ``path`` (a location: local, or a URI read through a local copy)
    for ``rows``: ``{id: float32 array}``, one per row.

    Raises :class:`SaliencyMismatch` (naming ``path`` and the first offending ids) when an id of
    the rows is missing from the file, an id appears twice in it, or a vector's length differs
    from the example's token count under ``tokenizer`` and ``max_length``. Ids in the file that
    the rows do not have are ignored.
    """
    path = Path(storage.local_copy(path)) if storage.is_uri(path) else Path(path)
    files = _parquet_files(path) if path.is_dir() else [str(path)]
    if not files or not all(Path(f).is_file() for f in files):
        raise SaliencyMismatch(f"no saliency Parquet files at {path}")
    table = pq.read_table(files, columns=["id", "saliency"])
    file_ids = [str(i) for i in table.column("id").to_pylist()]
    values = table.column("saliency").to_pylist()

    index: dict[str, int] = {}
    duplicates: list[str] = []
    for position, example_id in enumerate(file_ids):
        if example_id in index:
            duplicates.append(example_id)
        index[example_id] = position
    if duplicates:
        raise SaliencyMismatch(f"saliency labels at {path} have duplicate ids: {_first(sorted(set(duplicates)))}")

    frame = _normalise_rows(rows)
    missing = [i for i in frame["id"] if i not in index]
    if missing:
        raise SaliencyMismatch(
            f"saliency labels at {path} are missing {len(missing)} of {len(frame)} example ids: "
            f"{_first(missing)}; recompute them for these rows"
        )

    counts = _token_counts(tokenizer, frame, max_length)
    out: dict[str, np.ndarray] = {}
    wrong: list[str] = []
    for example_id, count in zip(frame["id"], counts):
        vector = values[index[example_id]]
        array = np.asarray(vector if vector is not None else [], dtype=np.float32)
        if array.ndim != 1 or len(array) != count:
            wrong.append(f"{example_id!r} ({len(array) if array.ndim == 1 else array.shape} values, {count} tokens)")
        out[example_id] = array
    if wrong:
        shown = ", ".join(wrong[:5]) + (f", ... ({len(wrong)} in all)" if len(wrong) > 5 else "")
        raise SaliencyMismatch(
            f"saliency labels at {path} do not match the token counts of {len(wrong)} example(s) "
            f"with max_length={max_length}: {shown}; they were computed with another tokenizer, "
            f"max_length or data"
        )
    return out
