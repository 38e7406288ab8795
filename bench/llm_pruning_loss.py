"""Where a decoder's pruning damage comes from: held-out answer loss after one-shot pruning.

No training: the untuned base (SmolLM2-135M-Instruct by default) is scored by first-order
Taylor importance on a few calibration batches of the bundled instruction set's training
split, pruned once to the target by each structure rule below, and its answer loss measured
on the held-out split, all in one process, side by side. This separates what the structure
choice costs from what federated LoRA recovery gets back (issue 17's gap: FedSpine-fixed at
30% against FedLoRA unpruned).

Rules:
- ``uniform``: the default (every layer keeps the same heads / channels; SmolLM2's kv groups
  make heads go 9 -> 6, the channels absorb the difference to reach the target mean).
- ``global``: per-layer mean-normalised scores ranked across layers (widths differ per layer).
- ``channels-only``: all heads kept, FFN channels at twice the target (same reported sparsity).

Importances, each with the uniform rule: ``taylor`` (|W dL/dW| with the base's true gradients,
the rules above), ``magnitude`` (|W|, no data) and ``lora-taylor`` (FedSpine's default: the
LoRA-gradient estimate, EMA over the calibration batches while a fresh rank-8 LoRA trains on
them with AdamW, as a device's first round does).

Rank, LoRA alpha, learning rate, EMA beta, batch size, sequence length and the held-out split
are the `llm` preset's (`--preset` for another).

    python bench/llm_pruning_loss.py --target 0.3 --calibration-batches 8
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fedspine.config import Config, load_config
from fedspine.data.instructions import load_instructions
from fedspine.data.loading import train_test_split
from fedspine.generative_eval import answer_loss
from fedspine.lora.peft_io import attach_lora
from fedspine.models.loading import load_causal_lm
from fedspine.pruning.importance import (
    LoraTaylorImportance,
    magnitude_importance,
    taylor_importance,
)
from fedspine.pruning.kept import KeptIndices, LayerKept
from fedspine.pruning.selection import select_groups_to_keep
from fedspine.pruning.slicing import build_pruned_model
from fedspine.pruning.sparsity import sparsity_report
from fedspine.train import tokenise_instructions


def channels_only(scores, kept: KeptIndices, target: float) -> KeptIndices:
    """Every head kept; each layer keeps its top (1 - 2 * target) share of FFN channels."""
    width = kept.dims.intermediate_size
    count = max(1, round(width * (1.0 - min(0.99, 2.0 * target))))
    layers = []
    for layer_scores, layer in zip(scores, kept.layers, strict=True):
        top = torch.sort(layer_scores.channels, descending=True, stable=True).indices[:count]
        layers.append(LayerKept(layer.heads, layer.kv_heads, tuple(sorted(top.tolist()))))
    return KeptIndices(family=kept.family, dims=kept.dims, layers=tuple(layers))


def lora_taylor_scores(cfg: Config, batches: list):
    """FedSpine's importance after a device's local steps on `batches` from a fresh LoRA."""
    loaded = load_causal_lm(cfg.model.source)
    m = cfg.model
    model = attach_lora(loaded.model, loaded.adapter, m.lora_rank, m.lora_alpha_per_rank, 0.0, 0)
    kept = KeptIndices.full(loaded.adapter, loaded.model.config)
    importance = LoraTaylorImportance(loaded.adapter, cfg.pruning.ema_beta)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.learning_rate)
    model.train()
    for batch in batches:
        model(**batch).loss.backward()
        importance.update(model, kept)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return importance.scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llm")
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = load_config(args.preset)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    loaded = load_causal_lm(cfg.model.source)
    model, tok, adapter = loaded.model, loaded.tokenizer, loaded.adapter
    data = load_instructions(cfg.data.dataset)
    train, test = train_test_split(
        data, cfg.data.test_fraction, args.seed, max_test=cfg.data.max_test_examples
    )

    def tokenised(ds):
        return tokenise_instructions(ds.texts, ds.targets, ds.labels, tok, cfg.data.max_seq_len)

    train_tok, test_tok = tokenised(train), tokenised(test)
    size = cfg.train.batch_size
    order = torch.randperm(len(train_tok), generator=torch.Generator().manual_seed(args.seed))
    batches = [
        train_tok.batch(order[i * size : (i + 1) * size].tolist())
        for i in range(args.calibration_batches)
    ]
    full = KeptIndices.full(adapter, model.config)
    started = time.perf_counter()
    scores = taylor_importance(model, adapter, full, batches)
    score_s = time.perf_counter() - started
    rules = {
        "uniform": select_groups_to_keep(scores, full, args.target, "uniform"),
        "global": select_groups_to_keep(scores, full, args.target, "global"),
        "channels-only": channels_only(scores, full, args.target),
        "magnitude": select_groups_to_keep(
            magnitude_importance(model, adapter, full), full, args.target, "uniform"
        ),
        "lora-taylor": select_groups_to_keep(
            lora_taylor_scores(cfg, batches), full, args.target, "uniform"
        ),
    }
    results = {"unpruned": {"answer_loss": answer_loss(model, test_tok), "sparsity": 0.0}}
    for name, kept in rules.items():
        pruned = build_pruned_model(model, kept)
        report = sparsity_report(kept, model.config)
        results[name] = {
            "answer_loss": answer_loss(pruned, test_tok),
            "sparsity": report["structures_removed"],
            "non_embedding_params_removed": report["non_embedding_params_removed"],
            "heads_kept_per_layer": [len(layer.heads) for layer in kept.layers],
            "channels_kept_per_layer": [len(layer.channels) for layer in kept.layers],
        }
        del pruned
    print(json.dumps({"target": args.target, "taylor_scoring_s": score_s, **results}, indent=1))
    print(f"\n{'rule':<14} {'answer loss':>11} {'vs unpruned':>11}")
    base = results["unpruned"]["answer_loss"]
    for name, row in results.items():
        print(f"{name:<14} {row['answer_loss']:>11.3f} {row['answer_loss'] - base:>+11.3f}")


if __name__ == "__main__":
    main()
