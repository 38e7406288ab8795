"""Cost of one LoRA-gradient Taylor importance update relative to one local training step.

MiniLM (bundled), LoRA on every prunable projection, batch 16, seq 128; prints the median step
time, the median `LoraTaylorImportance.update` time and their ratio (target: <= 10%).
Usage: PYTHONPATH=src python bench/scoring_overhead.py [--threads 2] [--steps 6] [--rank 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from fedspine.bench_inference import load_classifier
from fedspine.models.families import adapter_for
from fedspine.pruning.importance import LoraTaylorImportance
from fedspine.pruning.kept import KeptIndices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, name = load_classifier(None)
    adapter = adapter_for(base)
    kept = KeptIndices.full(adapter, base.config)
    lora = LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        target_modules=list(adapter.lora_target_modules),
        modules_to_save=list(adapter.head_module_names),
    )
    model = get_peft_model(base, lora).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    importance = LoraTaylorImportance(adapter)
    batch = {
        "input_ids": torch.randint(5, base.config.vocab_size, (args.batch, args.seq_len)),
        "labels": torch.randint(0, 2, (args.batch,)),
    }
    step_ms, score_ms = [], []
    for _ in range(args.steps + 1):  # the first round is warm-up
        start = time.perf_counter()
        model(**batch).loss.backward()
        middle = time.perf_counter()
        importance.update(model, kept)
        end = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        step_ms.append((middle - start + time.perf_counter() - end) * 1000)
        score_ms.append((end - middle) * 1000)
    step, score = statistics.median(step_ms[1:]), statistics.median(score_ms[1:])
    print(
        f"{name}, batch {args.batch}, seq {args.seq_len}, rank {args.rank}, threads {args.threads}"
    )
    print(f"training step {step:.1f} ms, importance update {score:.1f} ms")
    print(f"overhead {score / step:.1%} of a step")


if __name__ == "__main__":
    main()
