"""Instruction-tuning data in Dolly-15K's record format: instruction, context, response, category.

The bundled `instructions` set stands in for Dolly-15K (which no package registry ships; see
`bundled/PROVENANCE.md`); a user's Dolly-15K file, or any CSV/JSONL/Parquet/HF folder with
instruction and response columns, loads the same way. A record becomes one prompt (the
instruction, then the context when there is one) and its target response; its category is the
label, so splits stay stratified and devices are skewed by a Dirichlet over categories.
"""

from __future__ import annotations

from typing import Any

from fedspine.data.loading import (
    TextDataset,
    dataset_name,
    is_missing,
    read_bundled,
    read_columns,
    require_columns,
    user_data_path,
)
from fedspine.errors import DataError

BUNDLED_INSTRUCTIONS = ("instructions",)
DEFAULT_CATEGORY = "general"  # the one category of data without a category column
_HELP = (
    "use the bundled 'instructions', or a .csv/.jsonl/.json/.parquet file or save_to_disk "
    "folder with instruction and response columns"
)


def prompt_text(instruction: str, context: str) -> str:
    """The user turn of a record: the instruction, then its context (Dolly's layout)."""
    return f"{instruction}\n\n{context}" if context else instruction


def load_instructions(
    source: str,
    instruction_column: str = "instruction",
    context_column: str = "context",
    response_column: str = "response",
    category_column: str = "category",
) -> TextDataset:
    """Read instruction records into prompts (texts), responses (targets) and categories."""
    if source in BUNDLED_INSTRUCTIONS:
        columns = read_bundled(source, "scripts/build_instructions.py")
        where, name = f"bundled dataset '{source}'", source
    else:
        path = user_data_path(source, _HELP)
        columns, _ = read_columns(path, category_column)
        where, name = str(path), dataset_name(path)
    return _to_instructions(
        columns, (instruction_column, context_column, response_column, category_column), name, where
    )


def _to_instructions(
    columns: dict[str, list[Any]], names: tuple[str, str, str, str], dataset: str, where: str
) -> TextDataset:
    instruction, context, response, category = names
    require_columns(columns, {"instruction": instruction, "response": response}, where)
    rows = len(columns[instruction])
    contexts = columns.get(context, [""] * rows)
    categories = columns.get(category, [DEFAULT_CATEGORY] * rows)
    prompts, targets, raw_categories = [], [], []
    for item, extra, answer, kind in zip(
        columns[instruction], contexts, columns[response], categories, strict=True
    ):
        if is_missing(item) or is_missing(answer) or not str(item).strip():
            continue
        if not str(answer).strip():
            continue
        prompts.append(prompt_text(str(item).strip(), "" if is_missing(extra) else str(extra)))
        targets.append(str(answer).strip())
        raw_categories.append(DEFAULT_CATEGORY if is_missing(kind) else str(kind))
    if not prompts:
        raise DataError(
            f"{where} has no usable rows: every row has an empty instruction ('{instruction}') "
            f"or response ('{response}'). Check --set data.instruction_column / "
            "data.response_column."
        )
    label_names = sorted(set(raw_categories))
    index = {name: i for i, name in enumerate(label_names)}
    return TextDataset(
        texts=prompts,
        labels=[index[c] for c in raw_categories],
        label_names=label_names,
        name=dataset,
        targets=targets,
    )
