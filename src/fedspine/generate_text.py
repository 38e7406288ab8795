"""`fedspine generate`: answer a prompt with an exported (pruned, merged) causal LM directory.

The export is a stock Hugging Face directory, so this is plain transformers: load, apply the
tokenizer's chat template, decode greedily. It exists so a user can try a device's model from
the shell without writing code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedspine.errors import ModelError
from fedspine.train import prompt_ids


def generate_text(model_dir: Path, prompt: str, max_new_tokens: int = 64) -> str:
    """The model's greedy answer to `prompt` (its chat template applied when it has one)."""
    if not (model_dir / "config.json").is_file():
        raise ModelError(
            f"{model_dir} is not a model directory (no config.json): pass the folder "
            "`fedspine export` wrote"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"cannot load {model_dir} as a causal language model: {str(err).splitlines()[0]}; "
            "export a run trained with data.task=generate"
        ) from None
    ids = torch.tensor([prompt_ids(tokenizer, prompt)])
    with torch.no_grad():
        output = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()
