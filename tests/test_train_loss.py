"""Local loss with logit adjustment (train.logit_adjustment): the prior, the loss, its effect."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from fedspine.train import TokenisedData, label_log_prior, train_local, training_loss

torch.set_num_threads(1)


class BiasClassifier(torch.nn.Module):
    """Logits = one learned bias per class, whatever the input: shows a loss's label prior."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(num_labels))

    def forward(self, input_ids, attention_mask=None, labels=None):
        logits = self.bias.expand(input_ids.shape[0], -1)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return SimpleNamespace(logits=logits, loss=loss)


def test_prior_is_smoothed_log_frequency_times_tau():
    assert label_log_prior([0, 0, 1], 3, 0.0) is None
    offset = label_log_prior([0, 0, 0, 1], 3, 0.5)  # counts 3,1,0 -> (4, 2, 1) / 7
    expected = 0.5 * torch.log(torch.tensor([4 / 7, 2 / 7, 1 / 7]))
    assert torch.allclose(offset, expected)


def test_loss_is_cross_entropy_of_offset_logits():
    model = BiasClassifier(2)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([0.3, -0.2]))
    batch = {"input_ids": torch.zeros(4, 3, dtype=torch.long), "labels": torch.tensor([0, 1, 1, 0])}
    model.requires_grad_(False)
    plain = float(training_loss(model, batch, None))
    assert plain == pytest.approx(float(model(**batch).loss))
    assert float(training_loss(model, batch, torch.zeros(2))) == pytest.approx(plain)
    offset = torch.tensor([1.0, -1.0])
    logits = model.bias.detach() + offset
    expected = torch.nn.functional.cross_entropy(logits.expand(4, -1), batch["labels"])
    assert float(training_loss(model, batch, offset)) == pytest.approx(float(expected))


def _learned_gap(tau: float) -> float:
    """Train a bias-only classifier on 90% class 0 data; return its plain logit gap."""
    labels = [0] * 90 + [1] * 10
    data = TokenisedData([[5, 6]] * len(labels), labels, pad_token_id=0)
    model = BiasClassifier(2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    offset = label_log_prior(labels, 2, tau)
    train_local(model, data, 400, 20, lambda: optimizer, seed=0, logit_offset=offset)
    return float((model.bias[0] - model.bias[1]).detach())


def test_adjustment_removes_the_local_label_prior_from_what_the_model_learns():
    skewed = _learned_gap(0.0)
    balanced = _learned_gap(1.0)
    assert skewed == pytest.approx(math.log(9), abs=0.3)  # plain loss learns the 9:1 mix
    assert abs(balanced) < 0.3  # balanced softmax learns no preference from the mix alone
