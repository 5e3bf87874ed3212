"""Weighted k-nearest-neighbour classification of features (DINO's protocol: cosine similarity,
votes weighted by exp(similarity / T)): pure torch, on the floor that pre-training (the online
kNN) and evaluation (`mixdiff eval knn`) both stand on."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_KS = (20, 200)  # DINO reports both; k=20 is the headline
DEFAULT_TEMPERATURE = 0.07
SIMILARITY_BUDGET = 2**28  # floats of one chunk's similarity matrix (1 GiB): bounds memory


@torch.no_grad()
def weighted_knn_votes(train_features: Tensor, train_labels: Tensor, features: Tensor,
                       num_classes: int, ks: Sequence[int] = DEFAULT_KS,
                       temperature: float = DEFAULT_TEMPERATURE,
                       chunk_size: int | None = None) -> dict[int, Tensor]:
    """{k: (N, num_classes) votes} for every k, from one nearest-neighbour search with the
    largest k (the neighbours come sorted, so each smaller k is a prefix)."""
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(bank.device)
    deepest = min(max(ks), bank.shape[0])
    chunk_size = chunk_size or max(1, min(1024, SIMILARITY_BUDGET // bank.shape[0]))
    votes: dict[int, list[Tensor]] = {k: [] for k in ks}
    for chunk in F.normalize(features.float().to(bank.device), dim=1).split(chunk_size):
        similarity, neighbours = (chunk @ bank.T).topk(deepest, dim=1)
        weight, neighbour_labels = (similarity / temperature).exp(), labels[neighbours]
        for k in ks:
            k_votes = torch.zeros(chunk.shape[0], num_classes, device=bank.device)
            k_votes.scatter_add_(1, neighbour_labels[:, :k], weight[:, :k])
            votes[k].append(k_votes)
    return {k: torch.cat(v) for k, v in votes.items()}


def weighted_knn_predict(train_features: Tensor, train_labels: Tensor, features: Tensor,
                         num_classes: int, k: int = 20, temperature: float = DEFAULT_TEMPERATURE,
                         chunk_size: int = 1024) -> Tensor:
    """Predicted class of each row of `features`, by its k nearest training features."""
    votes = weighted_knn_votes(train_features, train_labels, features, num_classes, (k,),
                               temperature, chunk_size)
    return votes[k].argmax(dim=1)


def knn_accuracy(train_features: Tensor, train_labels: Tensor, features: Tensor, labels: Tensor,
                 num_classes: int, k: int = 20, temperature: float = DEFAULT_TEMPERATURE) -> float:
    predicted = weighted_knn_predict(train_features, train_labels, features, num_classes, k,
                                     temperature)
    return (predicted == labels.to(predicted.device)).float().mean().item()
