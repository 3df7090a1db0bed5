"""Load MMLU-format data into one canonical table, from the hub, the original CSV release, or
parquet/JSONL files with the `cais/mmlu` columns.

Canonical table, one row per question, in source order within each (split, subject):
    question_id  "{split}/{subject}/{row:05d}", stable across sources
    split        dev | validation | test
    subject      e.g. high_school_biology
    question     str (stripped)
    A, B, C, D   the four choices (stripped)
    answer       gold letter, A-D
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from repgeom.errors import InputError
from repgeom.letters import ANSWER_LETTERS

SPLITS = ("dev", "validation", "test")
CANONICAL_COLUMNS = ["question_id", "split", "subject", "question", *ANSWER_LETTERS, "answer"]
HUB_COLUMNS = ("question", "subject", "choices", "answer")
# The original release names the validation folder and files "val".
CSV_SPLIT_NAMES = {"dev": "dev", "validation": "val", "test": "test"}


class DatasetError(InputError):
    """Bad or unreachable input data; the message names the file, split or row at fault."""


def _as_letter(value) -> str | None:
    """A-D or 0-3 (int or digit string) as a letter; None for anything else."""
    if isinstance(value, str):
        text = value.strip()
        if text in ANSWER_LETTERS:
            return text
        if text.isdigit() and int(text) in range(4):
            return ANSWER_LETTERS[int(text)]
    elif isinstance(value, (int,)) or (hasattr(value, "dtype") and getattr(value, "dtype").kind in "iu"):
        if 0 <= int(value) <= 3:
            return ANSWER_LETTERS[int(value)]
    return None


def _answer_letter(value, where: str) -> str:
    """Accept A-D or 0-3 (int or digit string); anything else names the row at fault."""
    letter = _as_letter(value)
    if letter is None:
        raise DatasetError(f"{where}: answer {value!r} is outside A-D / 0-3")
    return letter


def text_record_lines(path: Path, kind: str = "csv") -> list[int]:
    """The 1-based line of the file on which each record starts, as pandas reads the records: blank lines are
    skipped, a CSV record may span lines inside quotes, and a header (if any) is a record like the others."""
    import csv

    starts = []
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        if kind == "csv":
            reader = csv.reader(handle)
            line = 1
            for record in reader:
                if any(field.strip() for field in record) or len(record) > 1:
                    starts.append(line)
                line = reader.line_num + 1
        else:  # JSON lines: one record per non-blank line
            starts = [number for number, text in enumerate(handle, start=1) if text.strip()]
    return starts


def file_line(path: Path, row: int, kind: str = "csv", header_rows: int = 0) -> str:
    """'line N' of the file for data row `row` (0-based, after `header_rows` header records)."""
    try:
        starts = text_record_lines(path, kind)
        return f"line {starts[row + header_rows]}"
    except (OSError, IndexError):  # cannot count: say which data row, 1-based
        return f"data row {row + 1}"


def _finish(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Number rows per (split, subject) in source order and order the table canonically."""
    table = pd.concat(frames, ignore_index=True)
    table["row"] = table.groupby(["split", "subject"], sort=False).cumcount()
    table["question_id"] = [f"{s}/{subj}/{r:05d}" for s, subj, r in zip(table["split"], table["subject"], table["row"])]
    for col in ["question", *ANSWER_LETTERS]:
        table[col] = table[col].astype(str).str.strip()
    table["split"] = pd.Categorical(table["split"], categories=SPLITS, ordered=True)
    table = table.sort_values(["split", "subject", "row"], kind="stable")
    table["split"] = table["split"].astype(str)
    return table[CANONICAL_COLUMNS].reset_index(drop=True)


def _check_splits(table: pd.DataFrame, source: str) -> None:
    for split in SPLITS:
        if not (table["split"] == split).any():
            raise DatasetError(f"{source}: split {split!r} is empty")


def _from_hub_columns(frame: pd.DataFrame, split: str, source: str, where_row=None) -> pd.DataFrame:
    """Rows with the cais/mmlu columns (question, subject, choices, answer as 0-3). `where_row(i)` says where row i
    is in the source (e.g. 'line 7' of a JSONL file); by default 'row i' (0-based, as the dataset indexes it)."""
    missing = [c for c in HUB_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(f"{source}: missing column(s) {missing}; expected {list(HUB_COLUMNS)}")
    rows = []
    for i, record in enumerate(frame[list(HUB_COLUMNS)].itertuples(index=False)):
        where = f"{source} {where_row(i) if where_row else f'row {i} (0-based)'}"
        choices = list(record.choices) if record.choices is not None else []
        if len(choices) != 4:
            raise DatasetError(f"{where}: expected 4 choices, found {len(choices)}")
        rows.append({"split": split, "subject": record.subject, "question": record.question,
                     **dict(zip(ANSWER_LETTERS, choices)), "answer": _answer_letter(record.answer, where)})
    return pd.DataFrame(rows, columns=["split", "subject", "question", *ANSWER_LETTERS, "answer"])


def load_hub(dataset_id: str, revision: str | None = None) -> pd.DataFrame:
    import datasets

    try:
        splits = datasets.load_dataset(dataset_id, "all", revision=revision)
    except Exception as err:  # datasets raises many types for "offline / not found"
        raise DatasetError(
            f"could not load dataset {dataset_id!r} (config 'all') from the hub: {type(err).__name__}: {err}. "
            "If this machine is offline, download it elsewhere (e.g. `datasets.load_dataset('cais/mmlu', 'all')"
            ".save_to_disk(...)` or the original CSV release) and set `dataset.path` in the config to the local "
            "copy (a folder with dev/ val/ test/ CSVs, or {dev,validation,test}*.parquet|jsonl files)."
        ) from err
    frames = []
    for split in SPLITS:
        if split not in splits:
            raise DatasetError(f"{dataset_id}: split {split!r} is missing")
        frames.append(_from_hub_columns(splits[split].to_pandas(), split, f"{dataset_id}[{split}]"))
    table = _finish(frames)
    _check_splits(table, dataset_id)
    return table


def _read_csv_release(root: Path) -> pd.DataFrame:
    frames = []
    for split, folder in CSV_SPLIT_NAMES.items():
        files = sorted((root / folder).glob(f"*_{folder}.csv"))
        if not files:
            raise DatasetError(f"{root / folder}: split {split!r} is empty (no *_{folder}.csv files)")
        for path in files:
            subject = path.name[: -len(f"_{folder}.csv")]
            try:
                raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
            except pd.errors.EmptyDataError:
                raise DatasetError(f"{path}: file is empty") from None
            except pd.errors.ParserError as err:  # pandas counts lines from 1, as here
                raise DatasetError(f"{path}: not a 6-column CSV ({' '.join(str(err).split())})") from None
            if raw.shape[1] != 6:
                raise DatasetError(f"{path}: expected 6 columns (question, A, B, C, D, answer), found {raw.shape[1]}")
            raw.columns = ["question", *ANSWER_LETTERS, "answer"]
            # The release's CSVs have no header: data row i (0-based) starts on line i + 1, or later when a
            # quoted field above it spans lines.
            letters = [_as_letter(v) for v in raw["answer"]]
            if None in letters:
                i = letters.index(None)
                _answer_letter(raw["answer"].iloc[i], f"{path} {file_line(path, i)}")
            raw["answer"] = letters
            raw.insert(0, "subject", subject)
            raw.insert(0, "split", split)
            frames.append(raw)
    return _finish(frames)


def _split_of_file(path: Path) -> str | None:
    name = path.name.lower()
    for split in SPLITS:
        if name.startswith(split) or name.startswith(f"{CSV_SPLIT_NAMES[split]}-") or name.startswith(f"{CSV_SPLIT_NAMES[split]}."):
            return split
    return None


def _read_table_files(root: Path) -> pd.DataFrame:
    files = sorted(p for p in root.rglob("*") if p.suffix in (".parquet", ".jsonl") and _split_of_file(p))
    frames = []
    for split in SPLITS:
        split_files = [p for p in files if _split_of_file(p) == split]
        if not split_files:
            raise DatasetError(f"{root}: split {split!r} is empty (no {split}*.parquet or {split}*.jsonl file)")
        for path in split_files:
            try:
                raw = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True)
            except ValueError as err:
                raise DatasetError(f"{path}: unreadable ({err})") from err
            where_row = (lambda i, path=path: file_line(path, i, "jsonl")) if path.suffix == ".jsonl" else None
            frames.append(_from_hub_columns(raw, split, str(path), where_row))
    table = _finish(frames)
    _check_splits(table, str(root))
    return table


def load_local(path: str | Path) -> pd.DataFrame:
    """A folder in the original release layout (dev/ val/ test/) or with split-named parquet/JSONL files."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset path {str(root)!r} does not exist or is not a folder")
    if all((root / folder).is_dir() for folder in CSV_SPLIT_NAMES.values()):
        return _read_csv_release(root)
    return _read_table_files(root)


def load_dataset_table(spec: dict) -> pd.DataFrame:
    """Load from the config's `dataset` section: `path` (local copy) wins over `id` (hub)."""
    if spec.get("path"):
        return load_local(spec["path"])
    return load_hub(spec["id"], spec.get("revision"))

