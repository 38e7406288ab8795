"""Sparsity report: structure shares and parameter shares match the pruned model's real size."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from fedspine.models.families import adapter_for, tiny_config
from fedspine.pruning import (
    KeptIndices,
    build_pruned_model,
    count_parameters,
    magnitude_importance,
    select_groups_to_keep,
    sparsity_report,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("model_type", ["bert", "llama", "gemma3_text"])
@pytest.mark.parametrize("mode", ["uniform", "global"])
def test_report_matches_the_built_model(model_type, mode):
    torch.manual_seed(0)
    config = tiny_config(model_type)
    model = AutoModelForSequenceClassification.from_config(config)
    adapter = adapter_for(model)
    full = KeptIndices.full(adapter, config)
    kept = select_groups_to_keep(magnitude_importance(model, adapter, full), full, 0.5, mode)
    report = sparsity_report(kept, config)
    full_counts = count_parameters(model)
    pruned_counts = count_parameters(build_pruned_model(model, kept))
    assert report["params"] == pruned_counts["params"]
    assert report["params_full"] == full_counts["params"]
    assert report["params_removed"] == pytest.approx(
        1 - pruned_counts["params"] / full_counts["params"]
    )
    assert report["non_embedding_params_removed"] == pytest.approx(
        1 - pruned_counts["non_embedding_params"] / full_counts["non_embedding_params"]
    )
    assert report["heads_removed"] == pytest.approx(0.5)
    assert report["channels_removed"] == pytest.approx(0.5)
    assert report["structures_removed"] == pytest.approx(0.5)
    assert 0 < report["params_removed"] < report["non_embedding_params_removed"] < 0.5


def test_unpruned_report_is_zero():
    config = tiny_config("roberta")
    adapter = adapter_for(config)
    report = sparsity_report(KeptIndices.full(adapter, config), config)
    assert report["params_removed"] == 0.0 and report["structures_removed"] == 0.0


def test_count_parameters_splits_embeddings_and_bytes():
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert"))
    counts = count_parameters(model)
    embeddings = model.bert.embeddings
    expected = (
        sum(m.weight.numel() for m in (embeddings.word_embeddings, embeddings.position_embeddings))
        + embeddings.token_type_embeddings.weight.numel()
    )
    assert counts["embedding_params"] == expected
    assert counts["params"] == sum(p.numel() for p in model.parameters())
    assert counts["param_bytes"] == 4 * counts["params"]
