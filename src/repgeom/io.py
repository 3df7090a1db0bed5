"""Atomic writes (an artifact appears under its final name only once it is complete), and reading parquet files."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path` (a file, or a folder if the block makes one there);
    move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
        elif os.path.exists(tmp):
            os.unlink(tmp)


def write_parquet(frame, path: str | Path) -> None:
    """A pandas DataFrame as parquet (pandas is not imported here: the provenance wrapper uses this module)."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_parquet_table(path: str | Path, what: str, error: type[Exception], columns=()):
    """The parquet file at `path` as a DataFrame, or `error` naming the file (as `what`) if it is missing,
    unreadable or lacks one of `columns`, rather than pyarrow's own exception."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise error(f"{what} {str(path)!r} is not a readable parquet file: {err}") from err
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise error(f"{what} {str(path)!r} lacks column(s) {missing}; it has {list(frame.columns)}")
    return frame


def parquet_rows(path: str | Path) -> int:
    """The number of rows of a parquet file, from its footer (nothing else is read)."""
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows
