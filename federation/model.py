"""Torch models for tabular binary classification, and their local training loop."""

from __future__ import annotations

import importlib

import numpy as np
import torch
from torch import nn

from citymesh.errors import InvalidInput

from .spec import ModelSpec


class LogisticRegression(nn.Module):
    """A single linear layer whose output is a logit."""

    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(inputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


class MLP(nn.Module):
    """A feed-forward network with ReLU hidden layers whose output is a logit."""

    def __init__(self, inputs: int, hidden: tuple[int, ...] = (32, 16)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = inputs
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)


def build_model(spec: ModelSpec, inputs: int, seed: int = 0) -> nn.Module:
    """Build the spec's model with weights drawn from ``seed``.

    A ``kind`` of the form ``package.module:ClassName`` names a user's torch module.
    It is called with the number of inputs and must return one logit per row.
    """
    torch.manual_seed(seed)
    if spec.kind == "logreg":
        return LogisticRegression(inputs)
    if spec.kind == "mlp":
        return MLP(inputs, tuple(spec.hidden))
    module_name, _, class_name = spec.kind.partition(":")
    try:
        module_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise InvalidInput(
            f"model {spec.kind!r} could not be loaded ({exc}); give an importable "
            "'package.module:ClassName'"
        ) from exc
    model = module_class(inputs)
    if not isinstance(model, nn.Module):
        raise InvalidInput(f"model {spec.kind!r} did not build a torch.nn.Module")
    return model


def train_epochs(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    spec: ModelSpec,
    seed: int,
    epochs: int | None = None,
) -> float:
    """Train with Adam and binary cross-entropy, and return the last epoch's mean loss.

    ``seed`` fixes the batch order, so a round is reproducible.
    """
    if len(features) == 0:
        return float("nan")
    x = torch.from_numpy(features)
    y = torch.from_numpy(labels.astype(np.float32))
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    last_loss = float("nan")
    for _ in range(epochs if epochs is not None else spec.local_epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), spec.batch_size):
            batch = order[start : start + spec.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        last_loss = total / len(x)
    return last_loss


def predict_scores(model: nn.Module, features: np.ndarray) -> np.ndarray:
    """Return the predicted probability of the positive class per row."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(features))
    return torch.sigmoid(logits).numpy().astype(np.float64)
