"""Datasets: bundled and user text data, stratified splits, and per-device partitions."""

from fedspine.data.loading import BUNDLED_DATASETS, TextDataset, load_dataset, train_test_split
from fedspine.data.partition import partition_indices, partition_summary

__all__ = [
    "BUNDLED_DATASETS",
    "TextDataset",
    "load_dataset",
    "partition_indices",
    "partition_summary",
    "train_test_split",
]
