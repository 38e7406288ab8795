"""fedspine: federated LoRA fine-tuning with on-device structured pruning (FedSpine)."""

__version__ = "0.1.0"
