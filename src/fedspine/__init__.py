"""fedspine: federated LoRA fine-tuning with on-device structured pruning (FedSpine)."""

__version__ = "0.1.0"


def load_pruned(model_dir):
    """Load a model written by `fedspine export` (any per-layer widths)."""
    from fedspine.pruning import load_pruned as _load_pruned

    return _load_pruned(model_dir)
