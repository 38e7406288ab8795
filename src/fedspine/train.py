"""Tokenised data, the local LoRA training loop and evaluation, shared by every method.

No Flower here: the Flower apps call these functions and translate their results to messages.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100  # label of a token the loss skips (prompt and padding)


@dataclass
class TokenisedData:
    """Token ids without padding (a list per example) and labels; batches pad to their longest.

    Classification: `labels` are the class ids. Instruction tuning (`prompt_lengths` set):
    each row is prompt + response + end token, `labels` are the categories, a batch's labels
    are the token ids with the prompt and the padding masked out (loss on the response only),
    and `references` keeps the response text for scoring generations. Batches are built on
    the CPU and handed out on `device` (where the process's model lives, `train.device`).
    """

    input_ids: list[list[int]]
    labels: list[int]
    pad_token_id: int
    prompt_lengths: list[int] | None = None
    references: list[str] | None = None
    device: str = "cpu"

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def generative(self) -> bool:
        return self.prompt_lengths is not None

    def batch(self, indices: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        rows = [self.input_ids[i] for i in indices]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        if self.prompt_lengths is None:
            labels = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        else:
            labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
            for i, index in enumerate(indices):
                labels[i, : self.prompt_lengths[index]] = IGNORE_INDEX
        return self._placed({"input_ids": ids, "attention_mask": mask, "labels": labels})

    def prompt_batch(self, indices: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Prompts only, left-padded, for batched generation."""
        rows = [self.input_ids[i][: self.prompt_lengths[i]] for i in indices]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        return self._placed({"input_ids": ids, "attention_mask": mask})

    def _placed(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device == "cpu":
            return batch
        return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}

    def subset(self, indices: list[int]) -> TokenisedData:
        def pick(values):
            return None if values is None else [values[i] for i in indices]

        return TokenisedData(
            [self.input_ids[i] for i in indices],
            [self.labels[i] for i in indices],
            self.pad_token_id,
            pick(self.prompt_lengths),
            pick(self.references),
            self.device,
        )


def tokenise(texts: list[str], labels: list[int], tokenizer, max_seq_len: int) -> TokenisedData:
    """Tokenise once; texts longer than max_seq_len are truncated by the tokenizer."""
    encoded = tokenizer(texts, truncation=True, max_length=max_seq_len, padding=False)
    return TokenisedData(list(encoded["input_ids"]), list(labels), int(tokenizer.pad_token_id))


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt as the model expects a user turn: its chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if hasattr(encoded, "keys"):  # a BatchEncoding
            encoded = encoded["input_ids"]
        return list(encoded)
    return list(tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"])


def end_token_id(tokenizer) -> int:
    """The token that ends an answer: eos, else sep (BERT-style vocabularies), else pad."""
    for candidate in (tokenizer.eos_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the tokenizer has no eos, sep or pad token to end an answer with")


PROMPT_TAIL_TOKENS = 8  # a chat template's closing tokens (end of turn, assistant header)


def _middle_truncated(ids: list[int], budget: int) -> list[int]:
    if len(ids) <= budget:
        return ids
    tail = min(PROMPT_TAIL_TOKENS, budget // 2)
    return ids[: budget - tail] + ids[len(ids) - tail :]


def tokenise_instructions(
    prompts: list[str],
    responses: list[str],
    categories: list[int],
    tokenizer,
    max_seq_len: int,
) -> TokenisedData:
    """prompt + response + end token per example, at most `max_seq_len` tokens.

    A long example keeps up to half the budget for its response; its prompt loses tokens from
    the middle (the end of a long context), so the instruction at the start and the generation
    prompt at the end both survive.
    """
    end = end_token_id(tokenizer)
    rows, lengths = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        question = prompt_ids(tokenizer, prompt)
        answer = list(tokenizer(response, add_special_tokens=False)["input_ids"])
        answer = answer[: max(1, max_seq_len // 2) - 1] + [end]
        question = _middle_truncated(question, max_seq_len - len(answer))
        rows.append(question + answer)
        lengths.append(len(question))
    return TokenisedData(
        rows, list(categories), int(tokenizer.pad_token_id), lengths, list(responses)
    )


def batch_stream(num_examples: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless shuffled epochs over a device's local examples (seeded, reproducible)."""
    rng = np.random.default_rng(seed)
    size = min(batch_size, num_examples)
    while True:
        order = rng.permutation(num_examples)
        for start in range(0, num_examples - size + 1, size):
            yield order[start : start + size]


@dataclass
class LocalTrainStats:
    """What a local run reports: probe loss before/after, work done, wall time."""

    loss_before: float
    loss_after: float
    steps: int
    examples: int
    tokens: int
    train_wall_s: float


StepHook = Callable[[int, dict[str, torch.Tensor]], None]
# After an optimizer step; returns True when it replaced trainable tensors (a prune step slices
# LoRA factors), so the loop must build a fresh optimizer over the new ones.
ReshapeHook = Callable[[int, dict[str, torch.Tensor]], bool]


def label_log_prior(labels: list[int], num_labels: int, tau: float) -> torch.Tensor | None:
    """tau x log of the device's label frequencies (add-one smoothed); None when tau is 0.

    Added to the logits in the local loss only (logit adjustment / FedLC-style calibration):
    a device whose data is mostly one class then fits the class-conditional signal instead of
    its own label mix, so the averaged head no longer swings with the participants' mix.
    Evaluation and inference use the plain logits.
    """
    if tau == 0.0:
        return None
    counts = torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=num_labels)
    prior = (counts.double() + 1.0) / (counts.sum().double() + num_labels)
    return (tau * prior.log()).float()


def training_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], logit_offset: torch.Tensor | None
) -> torch.Tensor:
    """The model's own loss, or cross-entropy of the offset logits when an offset is given."""
    if logit_offset is None:
        return model(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    offset = logit_offset.to(logits.device)  # built on the CPU; a no-op there
    return torch.nn.functional.cross_entropy(logits + offset, batch["labels"])


@torch.no_grad()
def batch_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    logit_offset: torch.Tensor | None = None,
) -> float:
    was_training = model.training
    model.eval()
    loss = float(training_loss(model, batch, logit_offset))
    model.train(was_training)
    return loss


def make_optimizer(
    model: torch.nn.Module,
    lr: float,
    head_lr: float,
    weight_decay: float,
    head_names: tuple[str, ...],
) -> torch.optim.Optimizer:
    """AdamW over trainable params; the new task head gets its own (higher) learning rate."""
    head, lora = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = any(f".{h}." in f".{name}." for h in head_names)
        (head if is_head else lora).append(param)
    groups = [{"params": lora, "lr": lr}]
    if head:
        groups.append({"params": head, "lr": head_lr})
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def train_local(
    model: torch.nn.Module,
    data: TokenisedData,
    steps: int,
    batch_size: int,
    new_optimizer: Callable[[], torch.optim.Optimizer],
    seed: int,
    after_backward: StepHook | None = None,
    after_step: ReshapeHook | None = None,
    logit_offset: torch.Tensor | None = None,
    precision: str = "fp32",
) -> LocalTrainStats:
    """Run `steps` optimizer steps; hooks see the step number (1-based) and the batch.

    `after_backward` runs while LoRA gradients exist (importance scoring reads them);
    `after_step` runs after the update (pruning happens there, then training continues); when
    it reports new parameters the optimizer is rebuilt with `new_optimizer` (fresh state).
    `logit_offset` (label_log_prior) is added to the logits of the training and probe losses.
    `precision="bf16"` runs every forward pass (training and the loss probes) under bf16
    autocast on the model's device; parameters, gradients and optimizer state stay fp32.
    """
    device_type = next(model.parameters()).device.type
    autocast = functools.partial(
        torch.autocast, device_type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )
    stream = batch_stream(len(data), batch_size, seed)
    probe = data.batch(next(batch_stream(len(data), batch_size, seed + 7919)))
    with autocast():
        loss_before = batch_loss(model, probe, logit_offset)
    model.train()
    optimizer = new_optimizer()
    examples = tokens = 0
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = data.batch(next(stream))
        with autocast():
            loss = training_loss(model, batch, logit_offset)
        if not math.isfinite(loss.item()):
            raise FloatingPointError("local training diverged (loss is not finite)")
        loss.backward()
        if after_backward is not None:
            after_backward(step, batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        examples += batch["labels"].shape[0]
        tokens += int(batch["input_ids"].numel())
        if after_step is not None and after_step(step, batch):
            optimizer = new_optimizer()
    train_wall_s = time.perf_counter() - start
    model.eval()
    with autocast():
        loss_after = batch_loss(model, probe, logit_offset)
    return LocalTrainStats(loss_before, loss_after, steps, examples, tokens, train_wall_s)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: TokenisedData, batch_size: int = 32) -> dict[str, float]:
    """Accuracy and mean cross-entropy over `data`, sorted by length so padding stays small."""
    model.eval()
    order = np.argsort([len(ids) for ids in data.input_ids])
    correct, loss_sum = 0, 0.0
    for start in range(0, len(order), batch_size):
        batch = data.batch(order[start : start + batch_size])
        out = model(**batch)
        correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
        loss_sum += float(out.loss) * batch["labels"].shape[0]
    n = max(len(data), 1)
    return {"accuracy": correct / n, "loss": loss_sum / n}
