"""Scoring generated answers: batched greedy generation, exact match or ROUGE-L per category.

A category whose references are short (a name, a label: at most `SHORT_ANSWER_WORDS` words
on average) is scored by normalised exact match; a longer one (definitions, subject lines,
pronunciations, Dolly's open QA) by ROUGE-L F1 from the `rouge-score` package. Categories whose
references are ARPAbet phonemes also report their phoneme error rate (`jiwer`), for reading:
it is not the score, because an answer that runs on past the pronunciation counts every extra
token as an insertion (the tuned smoke run's PER is over 1 while its ROUGE-L is 0.26).
The run's primary score is the mean over categories, so a large category does not drown a
small one. Evaluation is server work and is not added to simulated time. No Flower here.
"""

from __future__ import annotations

import functools
import re
import string
from collections import defaultdict

import torch

from fedspine.train import TokenisedData, end_token_id

SHORT_ANSWER_WORDS = 4.0
GENERATION_BATCH = 16
SCORE_DEFINITION = (
    "score: mean over categories of each category's mean score on the held-out answers, "
    "greedy decoding; exact match after lower-casing and stripping punctuation and articles "
    f"for categories whose references average <= {SHORT_ANSWER_WORDS:g} words, ROUGE-L F1 "
    "(rouge-score, stemmed) for the others"
)
_PHONEME = re.compile(r"^[A-Z]{1,2}[0-2]?$")  # an ARPAbet symbol, with its stress digit
_ARTICLES = re.compile(r"\b(a|an|the)\b")


@functools.cache
def _rouge():
    """Imported on first use: rouge-score pulls in nltk, scipy and scikit-learn (about 100 MB
    of every process's memory), which a classification run never needs."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def normalise(text: str) -> str:
    """SQuAD-style answer normalisation: lower case, no punctuation or articles, one space."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def category_metrics(references: list[str], categories: list[int]) -> dict[int, str]:
    """Per category: "exact" for short reference answers, "rouge-l" for longer ones."""
    answers: dict[int, list[str]] = defaultdict(list)
    for reference, category in zip(references, categories, strict=True):
        answers[category].append(reference)
    return {category: _metric_of(refs) for category, refs in answers.items()}


def is_phonemes(text: str) -> bool:
    """An ARPAbet transcription such as "K AE1 T"."""
    tokens = text.split()
    return bool(tokens) and all(_PHONEME.match(token) for token in tokens)


def _metric_of(references: list[str]) -> str:
    mean_words = sum(len(ref.split()) for ref in references) / len(references)
    return "exact" if mean_words <= SHORT_ANSWER_WORDS else "rouge-l"


def answer_score(prediction: str, reference: str, metric: str) -> float:
    if metric == "exact":
        return float(normalise(prediction) == normalise(reference))
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


def score_answers(
    predictions: list[str],
    references: list[str],
    categories: list[int],
    category_names: list[str],
    metrics: dict[int, str] | None = None,
) -> dict:
    """{"score": mean over categories, "per_category": {name: {metric, score, examples}}}."""
    import jiwer  # here, not at module level, like rouge-score

    metrics = metrics or category_metrics(references, categories)
    per: dict[int, list[float]] = defaultdict(list)
    contained: dict[int, list[float]] = defaultdict(list)
    phoneme_errors: dict[int, list[float]] = defaultdict(list)
    for prediction, reference, category in zip(predictions, references, categories, strict=True):
        per[category].append(answer_score(prediction, reference, metrics[category]))
        contained[category].append(float(normalise(reference) in normalise(prediction)))
        if is_phonemes(reference):
            phoneme_errors[category].append(jiwer.wer(reference, prediction.upper() or "-"))
    table = {
        category_names[c]: {
            "metric": metrics[c],
            "score": sum(values) / len(values),
            # lenient, for reading only: the reference appears in the answer (an untuned
            # instruct model answers in full sentences, which exact match scores 0)
            "contains": sum(contained[c]) / len(values),
            "examples": len(values),
        }
        for c, values in sorted(per.items())
    }
    for c, errors in phoneme_errors.items():
        if len(errors) == len(per[c]):  # a pronunciation category: report its PER too
            table[category_names[c]]["phoneme_error_rate"] = sum(errors) / len(errors)
    score = sum(row["score"] for row in table.values()) / len(table) if table else None
    return {"score": score, "per_category": table}


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer,
    data: TokenisedData,
    max_new_tokens: int,
    batch_size: int = GENERATION_BATCH,
) -> list[str]:
    """Greedy answers to every prompt of `data` (left-padded batches, KV cache on)."""
    model.eval()
    answers = []
    for start in range(0, len(data), batch_size):
        batch = data.prompt_batch(list(range(start, min(start + batch_size, len(data)))))
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=data.pad_token_id,
            eos_token_id=end_token_id(tokenizer),
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [answer.strip() for answer in answers]


@torch.no_grad()
def answer_loss(model: torch.nn.Module, data: TokenisedData, batch_size: int = 16) -> float:
    """Mean cross-entropy of the reference answers' tokens (the held-out answer loss)."""
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = data.batch(list(range(start, min(start + batch_size, len(data)))))
        count = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(**batch).loss) * count
        tokens += count
    return total / max(tokens, 1)


def evaluate_generation(
    model: torch.nn.Module,
    tokenizer,
    data: TokenisedData,
    category_names: list[str],
    max_new_tokens: int,
    metrics: dict[int, str] | None = None,
) -> dict:
    """{"accuracy": the primary score (the record's common field), "loss", "per_category"}.

    `metrics` fixes each category's metric (from the training references, so a small
    evaluation subset cannot flip it); by default it is derived from `data`.
    """
    predictions = generate_answers(model, tokenizer, data, max_new_tokens)
    scores = score_answers(predictions, data.references, data.labels, category_names, metrics)
    return {
        "accuracy": scores["score"],
        "loss": answer_loss(model, data),
        "per_category": scores["per_category"],
    }
