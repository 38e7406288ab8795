"""Load a labelled text dataset (bundled or user file) into one in-memory form, and split it.

Every readable-but-wrong input becomes a DataError whose message names the fix, so the CLI can
print it instead of a traceback. Texts are kept whole: truncation is the tokenizer's job.
"""

from __future__ import annotations

import gzip
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fedspine.errors import ConfigError, DataError

BUNDLED_DATASETS: tuple[str, ...] = ("spam", "sotu")
FILE_EXTENSIONS: tuple[str, ...] = (".csv", ".jsonl", ".jsonl.gz", ".json", ".parquet")
_SOURCE_HELP = (
    f"use a bundled name ({', '.join(BUNDLED_DATASETS)}), a .csv/.jsonl/.json/.parquet file, "
    "or a folder saved with datasets' save_to_disk"
)


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels 0..K-1; label_names[i] is the class name of label i.

    For instruction tuning, `texts` are the prompts, `targets` the responses and the labels
    the categories (so splits stay stratified and the Dirichlet skew runs over categories).
    """

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    name: str
    targets: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def subset(self, indices: Sequence[int]) -> TextDataset:
        """The rows at `indices`, same label space (used for splits and device partitions)."""
        return TextDataset(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            label_names=list(self.label_names),
            name=self.name,
            targets=None if self.targets is None else [self.targets[i] for i in indices],
        )


def load_dataset(
    source: str, text_column: str = "text", label_column: str = "label"
) -> TextDataset:
    """Read a bundled dataset by name, or a user file/folder, into a TextDataset."""
    if source in BUNDLED_DATASETS:
        return _load_bundled(source)
    path = user_data_path(source)
    columns, label_order = read_columns(path, label_column)
    return _to_dataset(
        columns, text_column, label_column, dataset_name(path), str(path), label_order
    )


def user_data_path(source: str, help_text: str = _SOURCE_HELP) -> Path:
    """The user's data file or folder, with a clear error when it does not exist."""
    path = Path(source).expanduser()
    if not path.exists():
        if not path.suffix and len(path.parts) == 1:
            raise DataError(f"Unknown dataset '{source}': {help_text}.")
        raise DataError(f"Data file not found: {path}. Check the path; {help_text}.")
    return path


def read_columns(path: Path, label_column: str) -> tuple[dict[str, list[Any]], list[str] | None]:
    """A data file's or save_to_disk folder's columns (and a ClassLabel order, if any)."""
    if path.is_dir():
        return _read_hf_dir(path, label_column)
    return _read_file(path), None


def read_bundled(name: str, build_script: str = "scripts/build_datasets.py") -> dict[str, list]:
    """The columns of a bundled `<name>.jsonl.gz` shipped inside the package."""
    bundled = resources.files("fedspine.data") / "bundled" / f"{name}.jsonl.gz"
    if not bundled.is_file():
        raise DataError(
            f"The bundled dataset file {name}.jsonl.gz is missing from the installed package: "
            f"reinstall fedspine, or rebuild it with `python {build_script}`."
        )
    with resources.as_file(bundled) as path:
        return _read_jsonl(path)


def _load_bundled(name: str) -> TextDataset:
    columns = read_bundled(name)
    return _to_dataset(columns, "text", "label", name, f"bundled dataset '{name}'")


def dataset_name(path: Path) -> str:
    """File name without its data extension (my.reviews.jsonl.gz -> my.reviews)."""
    lowered = path.name.lower()
    for extension in sorted(FILE_EXTENSIONS, key=len, reverse=True):
        if lowered.endswith(extension) and len(lowered) > len(extension):
            return path.name[: -len(extension)]
    return path.name


def _read_file(path: Path) -> dict[str, list[Any]]:
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".jsonl.gz") else path.suffix
    suffix = suffix.lower()
    if suffix not in FILE_EXTENSIONS:
        raise DataError(
            f"Unsupported data file type '{path.suffix or path.name}' for {path}: "
            f"convert it to one of {', '.join(FILE_EXTENSIONS)} (or {_SOURCE_HELP})."
        )
    if path.stat().st_size == 0:
        raise DataError(f"Data file {path} is empty: add rows with a text and a label column.")
    try:
        if suffix == ".csv":
            return _read_csv(path)
        if suffix == ".parquet":
            return _read_parquet(path)
        if suffix == ".json":
            return _read_json(path)
        return _read_jsonl(path)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not valid UTF-8 text (byte {err.start} cannot be decoded). "
            "Re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in > out`."
        ) from None


def _read_csv(path: Path) -> dict[str, list[Any]]:
    import pandas as pd

    try:
        frame = pd.read_csv(path, encoding="utf-8", keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise DataError(f"Data file {path} is empty: add a header row and data rows.") from None
    except pd.errors.ParserError as err:
        raise DataError(
            f"Malformed CSV in {path}: {err}. Quote fields that contain commas or newlines."
        ) from None
    return {str(col): frame[col].tolist() for col in frame.columns}


def _read_parquet(path: Path) -> dict[str, list[Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(
            f"Cannot read {path} as Parquet ({err}). Re-save it with pandas.DataFrame.to_parquet."
        ) from None
    return table.to_pydict()


def _read_jsonl(path: Path) -> dict[str, list[Any]]:
    """JSON Lines (optionally gzip): one object per line; errors carry the line number."""
    opener = gzip.open if path.name.endswith(".gz") else open
    rows: list[Any] = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"Malformed JSON on line {line_number} of {path}: {err.msg}. "
                    "Each line must be one JSON object such as "
                    '{"text": "...", "label": "..."}.'
                ) from None
    return _rows_to_columns(rows, path)


def _read_json(path: Path) -> dict[str, list[Any]]:
    """A JSON array of objects, an object of equal-length columns, or JSON Lines."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several top-level values: the file is JSON Lines
            return _read_jsonl(path)
        raise DataError(
            f"Malformed JSON in {path} at line {err.lineno}, column {err.colno}: {err.msg}. "
            "Fix the file or save it as JSON Lines (.jsonl), one object per line."
        ) from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        if len({len(v) for v in data.values()}) > 1:
            raise DataError(
                f"The columns in {path} have different lengths: every column list must have "
                "one entry per example."
            )
        return {str(k): v for k, v in data.items()}
    if isinstance(data, list):
        return _rows_to_columns(data, path)
    raise DataError(
        f"{path} must hold a JSON array of objects or an object of column lists, "
        f"not a {type(data).__name__}."
    )


def _rows_to_columns(rows: list[Any], path: Path) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {}
    for position, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(
                f"Record {position} of {path} is a {type(row).__name__}, not a JSON object: "
                'write each record as {"text": "...", "label": "..."}.'
            )
        for key in row:
            columns.setdefault(str(key), [None] * (position - 1))
        for key, values in columns.items():
            values.append(row.get(key))
    return columns


def _read_hf_dir(path: Path, label_column: str) -> tuple[dict[str, list[Any]], list[str] | None]:
    """A save_to_disk folder; all splits of a DatasetDict are concatenated (we re-split)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(
            f"{path} is a folder but not a dataset saved with datasets' save_to_disk ({err}). "
            f"Point at the saved folder or at a data file; {_SOURCE_HELP}."
        ) from None
    parts = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
    columns: dict[str, list[Any]] = {}
    for part in parts:
        for key, values in part.to_dict().items():
            columns.setdefault(key, []).extend(values)
    feature = parts[0].features.get(label_column) if parts else None
    if isinstance(feature, datasets.ClassLabel) and label_column in columns:
        columns[label_column] = [
            None if v is None else feature.int2str(int(v)) for v in columns[label_column]
        ]
        return columns, list(feature.names)
    return columns, None


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _check_columns(
    columns: dict[str, list[Any]], text_column: str, label_column: str, where: str
) -> None:
    if not columns or not any(columns.values()):
        raise DataError(f"{where} has no rows: add rows with a text and a label column.")
    require_columns(columns, {"text": text_column, "label": label_column}, where)


def require_columns(columns: dict[str, list[Any]], roles: dict[str, str], where: str) -> None:
    """Each role's column must exist; the error names the columns present and the setting."""
    present = ", ".join(repr(c) for c in columns) or "none"
    for role, wanted in roles.items():
        if wanted not in columns:
            raise DataError(
                f"{where} has no {role} column '{wanted}'; columns present: {present}. "
                f"Name the right one with --set data.{role}_column=<column>."
            )


def _label_names(raw_labels: list[Any], label_order: list[str] | None) -> list[str]:
    """Class names in a stable order: integers numerically, anything else by string."""
    present = set(raw_labels)
    if label_order is not None:
        return [name for name in label_order if name in present]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return [str(v) for v in sorted(present)]
    return sorted(present)


def _normalise_label(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)  # pandas turns an int column with a gap into floats
    return value if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _to_dataset(
    columns: dict[str, list[Any]],
    text_column: str,
    label_column: str,
    name: str,
    where: str,
    label_order: list[str] | None = None,
) -> TextDataset:
    _check_columns(columns, text_column, label_column, where)
    texts: list[str] = []
    raw_labels: list[Any] = []
    for text, label in zip(columns[text_column], columns[label_column], strict=True):
        if is_missing(text) or is_missing(label) or not str(text).strip():
            continue
        texts.append(str(text))
        raw_labels.append(_normalise_label(label))
    dropped = len(columns[text_column]) - len(texts)
    if not texts:
        raise DataError(
            f"{where} has no usable rows: every row has an empty text ('{text_column}') or a "
            f"missing label ('{label_column}'). Check --set data.text_column / data.label_column."
        )
    if dropped:
        warnings.warn(
            f"{where}: dropped {dropped} of {dropped + len(texts)} rows with an empty text "
            "or a missing label.",
            stacklevel=3,
        )
    if any(isinstance(v, int) for v in raw_labels) and any(isinstance(v, str) for v in raw_labels):
        raw_labels = [str(v) for v in raw_labels]
    names = _label_names(raw_labels, label_order)
    if len(names) < 2:
        raise DataError(
            f"{where} has only one class ({names[0]!r} in column '{label_column}'): "
            "classification needs at least two. Add examples of other classes or pick "
            "another label column with --set data.label_column=<column>."
        )
    index_of = {name: i for i, name in enumerate(names)}
    labels = [index_of[str(v)] for v in raw_labels]
    return TextDataset(texts=texts, labels=labels, label_names=names, name=name)


def _test_counts(class_sizes: np.ndarray, test_total: int) -> np.ndarray:
    """Per-class test counts summing to test_total, proportional to class size (largest
    remainder), never taking a class's last training example."""
    quota = class_sizes / class_sizes.sum() * test_total
    counts = np.minimum(np.floor(quota).astype(int), np.maximum(class_sizes - 1, 0))
    remainders = quota - counts
    for cls in np.argsort(-remainders, kind="stable"):
        if counts.sum() >= test_total:
            break
        if counts[cls] < class_sizes[cls] - 1:
            counts[cls] += 1
    return counts


def train_test_split(
    ds: TextDataset, test_fraction: float, seed: int, max_test: int | None = None
) -> tuple[TextDataset, TextDataset]:
    """Stratified, seeded split; max_test caps the test set (proportions kept) to bound
    evaluation time on large datasets."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}."
        )
    if max_test is not None and max_test < 1:
        raise ConfigError(f"max_test must be a positive number of examples, got {max_test}.")
    labels = np.asarray(ds.labels)
    class_sizes = np.bincount(labels, minlength=ds.num_classes)
    test_total = round(test_fraction * len(ds))
    if max_test is not None:
        test_total = min(test_total, max_test)
    counts = _test_counts(class_sizes, test_total)
    if counts.sum() == 0:
        raise DataError(
            f"Dataset '{ds.name}' has {len(ds)} examples: too few to hold out a test set at "
            f"test_fraction={test_fraction}. Use more data or a larger test fraction."
        )
    rng = np.random.default_rng(seed)
    test_idx: list[int] = []
    for cls, count in enumerate(counts):
        members = np.flatnonzero(labels == cls)
        test_idx.extend(rng.permutation(members)[:count].tolist())
    test_set = set(test_idx)
    train_idx = [i for i in range(len(ds)) if i not in test_set]
    return ds.subset(train_idx), ds.subset(sorted(test_idx))
