"""Local training tokens/s: fedspine's device round vs a bare transformers+peft loop.

Same model (bundled MiniLM), same LoRA targets and rank, same batch size, sequence length and
examples, same thread count; measured side by side in one process, alternating, median of
repeats. Prints the ratio (goal >= 0.9x, must >= 0.8x).

    python bench/train_throughput.py [--steps 30] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def bare_loop(res, steps: int, batch_size: int, seed: int) -> float:
    """The reference: plain transformers + peft, no fedspine code in the loop. Returns tokens/s."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    cfg = res.config
    model = AutoModelForSequenceClassification.from_pretrained(
        res.base.model_dir, num_labels=len(res.label_names)
    )
    adapter = res.base.adapter
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.model.lora_rank,
            lora_alpha=cfg.model.lora_alpha_per_rank * cfg.model.lora_rank,
            target_modules=list(adapter.lora_target_modules),
            modules_to_save=list(adapter.head_module_names),
            task_type="SEQ_CLS",
        ),
    )
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], 1e-3)
    data = res.train.subset(res.partitions[0])
    generator = torch.Generator().manual_seed(seed)
    batches = [
        data.batch(torch.randint(len(data), (batch_size,), generator=generator).tolist())
        for _ in range(steps)
    ]
    peft_model.train()
    tokens = 0
    start = time.perf_counter()
    for batch in batches:
        loss = peft_model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch["input_ids"].numel()
    return tokens / (time.perf_counter() - start)


def fedspine_round(res, steps: int) -> tuple[float, float]:
    """fedspine's whole device round (model rebuild, LoRA, loop, costing). Returns
    (tokens/s over the training loop, tokens/s over the whole round)."""
    from fedspine.device_round import run_device_round
    from fedspine.evaluation import full_kept
    from fedspine.protocol import DevicePlan, Downlink

    plan = DevicePlan(round_num=1, lora_rank=res.config.model.lora_rank, local_steps=steps)
    downlink = Downlink(plan, full_kept(res), factors={}, head={})  # fresh LoRA, unpruned
    start = time.perf_counter()
    report = run_device_round(res, res.fleet[0], downlink).uplink.report
    whole = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(f"the device round failed: {report.error}")
    return report.train_tokens / report.train_wall_s, report.train_tokens / whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preset", default="default")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from fedspine.config import load_config
    from fedspine.logs import quiet_logs
    from fedspine.resources import build_resources

    quiet_logs()
    res = build_resources(load_config(args.preset))
    bare, loop, whole = [], [], []
    for repeat in range(args.repeats):
        bare.append(bare_loop(res, args.steps, res.config.train.batch_size, repeat))
        loop_tps, whole_tps = fedspine_round(res, args.steps)
        loop.append(loop_tps)
        whole.append(whole_tps)
    result = {
        "steps": args.steps,
        "batch": res.config.train.batch_size,
        "max_seq_len": res.config.data.max_seq_len,
        "threads": args.threads,
        "bare_tokens_per_s": statistics.median(bare),
        "fedspine_loop_tokens_per_s": statistics.median(loop),
        "fedspine_round_tokens_per_s": statistics.median(whole),
    }
    result["loop_ratio"] = result["fedspine_loop_tokens_per_s"] / result["bare_tokens_per_s"]
    result["round_ratio"] = result["fedspine_round_tokens_per_s"] / result["bare_tokens_per_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
