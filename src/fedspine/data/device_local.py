"""A device's own training data: the file its node config names, read on the device only.

Labels are mapped onto the run's agreed label names (`data.labels`), so every device's head
lines up with the server's; a label the run does not know is an error naming it, not a new
class. Instruction data keeps its own categories (they only steer the partition skew).
"""

from __future__ import annotations

from fedspine.config import DataSection
from fedspine.data.instructions import load_instructions
from fedspine.data.loading import read_columns, require_columns, user_data_path
from fedspine.deploy.node_config import DATA_PATH, NodeSettings
from fedspine.errors import DataError
from fedspine.train import TokenisedData, tokenise, tokenise_instructions

_HELP = "name a .csv/.jsonl/.json/.parquet file in the node config's data-path"


def agreed_labels(data: DataSection) -> list[str]:
    return [name.strip() for name in data.labels.split(",") if name.strip()]


def _classify_rows(settings: NodeSettings, data: DataSection) -> tuple[list[str], list[int]]:
    path = user_data_path(settings.data_path, _HELP)
    text_col = settings.column("text_column", data.text_column)
    label_col = settings.column("label_column", data.label_column)
    columns, _ = read_columns(path, label_col)
    require_columns(columns, {"text": text_col, "label": label_col}, str(path))
    index = {name: i for i, name in enumerate(agreed_labels(data))}
    texts, labels, unknown = [], [], set()
    for text, label in zip(columns[text_col], columns[label_col], strict=True):
        if text is None or label is None or not str(text).strip():
            continue
        name = str(int(label)) if isinstance(label, float) and label.is_integer() else str(label)
        if name not in index:
            unknown.add(name)
            continue
        texts.append(str(text))
        labels.append(index[name])
    if unknown:
        shown = ", ".join(repr(u) for u in sorted(unknown)[:5])
        raise DataError(
            f"{path}: labels {shown} are not in the run's label set "
            f"({', '.join(index)}); relabel the rows or add the names to data.labels"
        )
    if not texts:
        raise DataError(f"{path} has no usable rows (empty text or label in every row)")
    return texts, labels


def load_device_data(
    settings: NodeSettings, data: DataSection, tokenizer, min_examples: int
) -> TokenisedData:
    """The device's tokenised training set, or a DataError saying what is wrong with it."""
    if not settings.data_path:
        raise DataError(
            f"this run trains on device-local data but the node config has no {DATA_PATH}; "
            f'start the SuperNode with --node-config "... {DATA_PATH}=/path/to/data.jsonl"'
        )
    if data.task == "generate":
        names = [
            settings.column(f"{role}_column", getattr(data, f"{role}_column"))
            for role in ("instruction", "context", "response", "category")
        ]
        rows = load_instructions(settings.data_path, *names)
        tokenised = tokenise_instructions(
            rows.texts, rows.targets, rows.labels, tokenizer, data.max_seq_len
        )
    else:
        texts, labels = _classify_rows(settings, data)
        tokenised = tokenise(texts, labels, tokenizer, data.max_seq_len)
    if len(tokenised) < min_examples:
        raise DataError(
            f"{settings.data_path} has {len(tokenised)} usable rows; a device needs at least "
            f"{min_examples} (train.batch_size)"
        )
    return tokenised
