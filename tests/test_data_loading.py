"""Loading bundled and user datasets, the DataError messages for bad input, and the split."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from fedspine.data.loading import (
    BUNDLED_DATASETS,
    TextDataset,
    load_dataset,
    train_test_split,
)
from fedspine.errors import ConfigError, DataError

ROWS = [
    {"text": "free money now", "label": "spam"},
    {"text": "meeting at noon", "label": "ham"},
    {"text": "win a prize today", "label": "spam"},
    {"text": "lunch tomorrow?", "label": "ham"},
    {"text": "minutes attached", "label": "ham"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def assert_same_as_rows(ds: TextDataset, rows: list[dict]) -> None:
    assert ds.label_names == ["ham", "spam"]
    assert ds.texts == [r["text"] for r in rows]
    assert [ds.label_names[i] for i in ds.labels] == [r["label"] for r in rows]


# ---- bundled datasets -------------------------------------------------------------------


def test_bundled_spam_has_two_classes_and_plausible_size() -> None:
    ds = load_dataset("spam")
    assert ds.name == "spam" and ds.label_names == ["ham", "spam"]
    counts = Counter(ds.labels)
    assert 5000 <= len(ds) <= 6046
    assert 3500 <= counts[0] <= 4150 and 1500 <= counts[1] <= 1896
    assert all(text.strip() for text in ds.texts)
    assert len(set(ds.texts)) == len(ds.texts)  # deduplicated: no leak across a split


def test_bundled_topic_dataset_has_balanced_classes() -> None:
    ds = load_dataset("sotu")
    assert ds.num_classes >= 4
    counts = Counter(ds.labels)
    assert set(counts) == set(range(ds.num_classes))
    assert 2000 <= len(ds) <= 10000
    assert max(counts.values()) <= 1.5 * min(counts.values())
    assert min(len(text.split()) for text in ds.texts) >= 40
    assert not any("(Applause" in text or "[Laughter]" in text for text in ds.texts)


def test_bundled_names_are_exported() -> None:
    assert set(BUNDLED_DATASETS) == {"spam", "sotu"}


# ---- round trips through each supported format ------------------------------------------


def test_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "mail.csv"
    lines = ["text,label"] + [f'"{r["text"]}",{r["label"]}' for r in ROWS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = load_dataset(str(path))
    assert ds.name == "mail"
    assert_same_as_rows(ds, ROWS)


def test_jsonl_and_gzip_jsonl_round_trip(tmp_path: Path) -> None:
    assert_same_as_rows(load_dataset(str(write_jsonl(tmp_path / "a.jsonl", ROWS))), ROWS)
    gz_path = tmp_path / "b.jsonl.gz"
    with gzip.open(gz_path, "wt", encoding="utf-8") as out:
        out.writelines(json.dumps(r) + "\n" for r in ROWS)
    ds = load_dataset(str(gz_path))
    assert ds.name == "b"
    assert_same_as_rows(ds, ROWS)


def test_json_array_and_column_object_round_trip(tmp_path: Path) -> None:
    array_path = tmp_path / "rows.json"
    array_path.write_text(json.dumps(ROWS), encoding="utf-8")
    assert_same_as_rows(load_dataset(str(array_path)), ROWS)
    columns_path = tmp_path / "cols.json"
    columns = {"text": [r["text"] for r in ROWS], "label": [r["label"] for r in ROWS]}
    columns_path.write_text(json.dumps(columns), encoding="utf-8")
    assert_same_as_rows(load_dataset(str(columns_path)), ROWS)


def test_parquet_round_trip_with_custom_columns(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "mail.parquet"
    frame = pd.DataFrame({"body": [r["text"] for r in ROWS], "y": [r["label"] for r in ROWS]})
    frame.to_parquet(path)
    assert_same_as_rows(load_dataset(str(path), text_column="body", label_column="y"), ROWS)


def test_hf_dataset_dir_keeps_classlabel_order(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    table = datasets.Dataset.from_dict(
        {"text": ["bad", "good", "awful", "great"], "label": [0, 1, 0, 1]}, features=features
    )
    table.save_to_disk(str(tmp_path / "hf"))
    ds = load_dataset(str(tmp_path / "hf"))
    assert ds.label_names == ["neg", "pos"]
    assert ds.labels == [0, 1, 0, 1]


def test_hf_dataset_dict_concatenates_all_splits(tmp_path: Path) -> None:
    import datasets

    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [2, 10, 2]}),
            "test": datasets.Dataset.from_dict({"text": ["d", "e"], "label": [10, 2]}),
        }
    )
    splits.save_to_disk(str(tmp_path / "hf"))
    ds = load_dataset(str(tmp_path / "hf"))
    assert sorted(ds.texts) == ["a", "b", "c", "d", "e"]
    assert ds.label_names == ["2", "10"]  # integer labels sort numerically, not as strings
    by_text = dict(zip(ds.texts, ds.labels, strict=True))
    assert by_text == {"a": 0, "b": 1, "c": 0, "d": 1, "e": 0}


def test_very_long_texts_are_kept_whole(tmp_path: Path) -> None:
    long_text = "word " * 40_000
    rows = [{"text": long_text, "label": "a"}, {"text": "short", "label": "b"}]
    ds = load_dataset(str(write_jsonl(tmp_path / "long.jsonl", rows)))
    assert ds.texts[0] == long_text


def test_empty_texts_are_dropped_with_a_counted_warning(tmp_path: Path) -> None:
    rows = [
        *ROWS,
        {"text": "", "label": "ham"},
        {"text": "   ", "label": "spam"},
        {"text": None, "label": "ham"},
        {"text": "no label", "label": None},
    ]
    with pytest.warns(UserWarning, match="dropped 4 of 9 rows"):
        ds = load_dataset(str(write_jsonl(tmp_path / "gaps.jsonl", rows)))
    assert_same_as_rows(ds, ROWS)


def test_csv_with_missing_cells_drops_those_rows(tmp_path: Path) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text("text,label\nhello,1\n,0\nbye,0\nagain,\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="dropped 2"):
        ds = load_dataset(str(path))
    assert ds.texts == ["hello", "bye"] and ds.label_names == ["0", "1"] and ds.labels == [1, 0]


# ---- every bad input is a DataError whose message names the fix -------------------------


def load_error(source: str | Path, **columns: str) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(str(source), **columns)
    return str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    message = load_error(tmp_path / "nope.csv")
    assert "not found" in message and "nope.csv" in message


def test_unknown_bundled_name_lists_the_names() -> None:
    message = load_error("spamm")
    assert "spamm" in message and "spam" in message and "sotu" in message


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("hello\n", encoding="utf-8")
    message = load_error(path)
    assert ".txt" in message and ".csv" in message and ".parquet" in message


def test_missing_text_column_lists_columns_and_setting(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "x", "label": "a"}])
    message = load_error(path)
    assert "'text'" in message and "'body'" in message and "data.text_column" in message


def test_missing_label_column_lists_columns_and_setting(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "category": "a"}])
    message = load_error(path)
    assert "'label'" in message and "'category'" in message and "data.label_column" in message


@pytest.mark.parametrize("file_name", ["empty.csv", "empty.jsonl", "empty.json", "empty.parquet"])
def test_empty_file(tmp_path: Path, file_name: str) -> None:
    (tmp_path / file_name).write_bytes(b"")
    assert "empty" in load_error(tmp_path / file_name)


def test_header_only_csv_and_blank_jsonl_have_no_rows(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text("text,label\n", encoding="utf-8")
    assert "no rows" in load_error(tmp_path / "h.csv")
    (tmp_path / "b.jsonl").write_text("\n\n", encoding="utf-8")
    assert "no rows" in load_error(tmp_path / "b.jsonl")


def test_all_texts_empty(tmp_path: Path) -> None:
    rows = [{"text": "", "label": "a"}, {"text": " ", "label": "b"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert "no usable rows" in load_error(path)


def test_only_one_class(tmp_path: Path) -> None:
    rows = [{"text": "x", "label": "a"}, {"text": "y", "label": "a"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    message = load_error(path)
    assert "only one class" in message and "'a'" in message


@pytest.mark.parametrize("file_name", ["latin.csv", "latin.jsonl", "latin.json"])
def test_non_utf8_bytes_suggest_reencoding(tmp_path: Path, file_name: str) -> None:
    if file_name.endswith(".csv"):
        body = "text,label\ncafé crème,a\nthé,b\n"
    elif file_name.endswith(".jsonl"):
        body = '{"text": "café", "label": "a"}\n{"text": "thé", "label": "b"}\n'
    else:
        body = '[{"text": "café", "label": "a"}, {"text": "thé", "label": "b"}]'
    (tmp_path / file_name).write_bytes(body.encode("latin-1"))
    message = load_error(tmp_path / file_name)
    assert "UTF-8" in message and "Re-encode" in message


def test_malformed_json_line_gives_line_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c",\n')
    message = load_error(path)
    assert "line 3" in message


def test_malformed_json_file_gives_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"text": "a", "label": "x"},\n {"text": "b" "label": "y"}]')
    assert "line 2" in load_error(path)


def test_jsonl_record_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n["b", "y"]\n', encoding="utf-8")
    assert "Record 2" in load_error(path)


def test_corrupt_parquet(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet at all")
    assert "Parquet" in load_error(tmp_path / "bad.parquet")


def test_folder_that_is_not_a_saved_dataset(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    assert "save_to_disk" in load_error(tmp_path / "folder")


# ---- stratified split --------------------------------------------------------------------


def make_dataset(class_sizes: list[int]) -> TextDataset:
    labels = [cls for cls, size in enumerate(class_sizes) for _ in range(size)]
    return TextDataset(
        texts=[f"example {i}" for i in range(len(labels))],
        labels=labels,
        label_names=[f"c{i}" for i in range(len(class_sizes))],
        name="toy",
    )


def test_split_is_disjoint_complete_and_stratified() -> None:
    ds = make_dataset([600, 300, 100])
    train, test = train_test_split(ds, test_fraction=0.2, seed=0)
    assert len(test) == 200 and len(train) == 800
    assert set(train.texts).isdisjoint(test.texts)
    assert set(train.texts) | set(test.texts) == set(ds.texts)
    assert Counter(test.labels) == {0: 120, 1: 60, 2: 20}
    assert train.label_names == test.label_names == ds.label_names
    for text, label in zip(test.texts, test.labels, strict=True):
        assert ds.labels[ds.texts.index(text)] == label


def test_split_is_seeded() -> None:
    ds = make_dataset([50, 50, 50])
    first = train_test_split(ds, 0.3, seed=7)[1].texts
    assert train_test_split(ds, 0.3, seed=7)[1].texts == first
    assert train_test_split(ds, 0.3, seed=8)[1].texts != first


def test_split_max_test_caps_and_keeps_proportions() -> None:
    train, test = train_test_split(make_dataset([600, 300, 100]), 0.5, seed=0, max_test=100)
    assert len(test) == 100 and len(train) == 900
    assert Counter(test.labels) == {0: 60, 1: 30, 2: 10}


def test_split_keeps_a_training_example_of_every_class() -> None:
    train, test = train_test_split(make_dataset([20, 1, 2]), 0.9, seed=0)
    assert set(train.labels) == {0, 1, 2}
    assert len(train) + len(test) == 23


def test_split_rejects_bad_fraction_and_tiny_data() -> None:
    with pytest.raises(ConfigError):
        train_test_split(make_dataset([5, 5]), 1.0, seed=0)
    with pytest.raises(ConfigError):
        train_test_split(make_dataset([5, 5]), 0.0, seed=0)
    with pytest.raises(DataError, match="too few"):
        train_test_split(make_dataset([1, 1]), 0.2, seed=0)
