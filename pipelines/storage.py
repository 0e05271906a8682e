"""Where a pipeline's files live: a local directory or object storage (``s3://bucket/prefix``,
``gs://...``), read and written the same way through pyarrow's filesystems (what Ray Train and
Ray Data use for ``ray.storage_path``).

A *location* is a string: a local path, or a URI with a scheme. Stage-1 checkpoints, saliency
labels and trial checkpoints are passed between the driver, Train workers, Data actors and Tune
trials as locations, never as a driver-local copy, so that a process on another node can read
them. :func:`local_copy` gives a process a local directory to load from (a URI is downloaded
once per process and location: what a location names is never rewritten in place).

S3 credentials and endpoint come from the usual environment variables of every node
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3-compatible
server): pyarrow and boto3 (MLflow) both read them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def join(location: str | Path, *parts: str) -> str:
    """``location/part/...`` for a URI or a local path (``Path`` would fold ``s3://`` to ``s3:/``)."""
    if is_uri(location):
        return "/".join([str(location).rstrip("/"), *parts])
    return str(Path(location, *parts))


def filesystem(location: str | Path):
    """(pyarrow filesystem, path inside it) for a location."""
    from pyarrow import fs

    if is_uri(location):
        return fs.FileSystem.from_uri(str(location))
    return fs.LocalFileSystem(), str(Path(location).resolve())


def location_of(path: str, handle) -> str:
    """The location of ``path`` inside the pyarrow filesystem ``handle`` (as a Ray ``Checkpoint``
    has them: ``bucket/prefix/...`` on an ``S3FileSystem``)."""
    kind = handle.type_name
    if kind == "local":
        return path
    return f"{'gs' if kind == 'gcs' else kind}://{path.lstrip('/')}"


def exists(location: str | Path) -> bool:
    from pyarrow import fs

    handle, path = filesystem(location)
    return handle.get_file_info(path).type != fs.FileType.NotFound


def list_files(location: str | Path, suffix: str = "") -> list[str]:
    """The files directly under a directory location whose names end in ``suffix``, sorted."""
    from pyarrow import fs

    handle, path = filesystem(location)
    infos = handle.get_file_info(fs.FileSelector(path, allow_not_found=True))
    names = sorted(info.base_name for info in infos if info.type == fs.FileType.File)
    return [join(location, name) for name in names if name.endswith(suffix)]


def write_text(location: str | Path, text: str) -> None:
    handle, path = filesystem(location)
    with handle.open_output_stream(path) as stream:
        stream.write(text.encode("utf-8"))


def remove_tree(location: str | Path) -> None:
    """Delete a directory location and everything under it (nothing if it is not there)."""
    handle, path = filesystem(location)
    if exists(location):
        handle.delete_dir(path)


def local_copy(location: str | Path) -> str:
    """A local directory with the contents of ``location``: a local path as it is, a URI
    downloaded (once per machine and URI) into the temporary directory. Downloads land in a
    directory of their own and are renamed into place when complete, so processes that share
    a machine (two workers of one node) never see half a copy."""
    if not is_uri(location):
        return str(location)
    from pyarrow import fs

    cache = Path(tempfile.gettempdir()) / f"adapler-{os.getuid()}-storage"
    target = cache / hashlib.sha256(str(location).encode("utf-8")).hexdigest()[:24]
    if target.is_dir():
        return str(target)
    handle, path = filesystem(location)
    if handle.get_file_info(path).type != fs.FileType.Directory:
        raise FileNotFoundError(f"{location}: no such directory in storage")
    cache.mkdir(parents=True, exist_ok=True)
    download = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache))
    try:
        fs.copy_files(path, str(download), source_filesystem=handle, destination_filesystem=fs.LocalFileSystem())
        os.rename(download, target)
    except OSError:
        if not target.is_dir():  # else another process finished the same download first
            raise
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return str(target)
