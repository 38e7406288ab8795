"""Each node's own data file and the server's evaluation file, cut from one dataset.

`deploy-local` plays a fleet on one machine, so it makes the private data real devices would
bring: the run's training pool is split across the nodes (the same seeded Dirichlet partition
as in simulation) and each share is written to its own JSONL file, which only that node reads;
the held-out test set goes to the server's file. After this, no process loads the dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedspine.config import Config
from fedspine.data.loading import TextDataset
from fedspine.data.partition import partition_indices
from fedspine.errors import ConfigError
from fedspine.resources import load_data

TEXT, LABEL = "text", "label"  # the columns of every file written here


@dataclass(frozen=True)
class Shards:
    server_eval: Path  # the server's held-out set (data.dataset of the deployed run)
    nodes: tuple[Path, ...]  # node i's own training data
    label_names: tuple[str, ...]


def _write_jsonl(path: Path, ds: TextDataset, indices: list[int]) -> Path:
    lines = [
        json.dumps({TEXT: ds.texts[i], LABEL: ds.label_names[ds.labels[i]]}, ensure_ascii=False)
        for i in indices
    ]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def write_shards(config: Config, folder: Path) -> Shards:
    """Split the config's dataset into `fleet.num_devices` node files and a server file."""
    if config.data.task != "classify":
        raise ConfigError(
            "deploy-local writes node data for classification runs only; for data.task=generate "
            "give each SuperNode its own instruction file (node config data-path)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    train, test = load_data(config)
    alpha = None if config.data.iid else config.data.dirichlet_alpha
    parts = partition_indices(
        train.labels,
        config.fleet.num_devices,
        alpha,
        config.run.seed,
        min_size=config.train.batch_size,
    )
    nodes = tuple(
        _write_jsonl(folder / f"node-{i}.jsonl", train, indices) for i, indices in enumerate(parts)
    )
    server = _write_jsonl(folder / "server-eval.jsonl", test, list(range(len(test))))
    return Shards(server, nodes, tuple(train.label_names))
