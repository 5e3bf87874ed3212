"""Weighted k-nearest-neighbour classification of features (DINO's protocol: cosine similarity,
votes weighted by exp(similarity / T))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def weighted_knn_predict(train_features: Tensor, train_labels: Tensor, features: Tensor,
                         num_classes: int, k: int = 20, temperature: float = 0.07,
                         chunk_size: int = 1024) -> Tensor:
    """Predicted class of each row of `features`, by its k nearest training features."""
    bank = F.normalize(train_features.float(), dim=1)
    k = min(k, bank.shape[0])
    predictions = []
    for chunk in F.normalize(features.float(), dim=1).split(chunk_size):
        similarity, neighbours = (chunk @ bank.T).topk(k, dim=1)
        votes = torch.zeros(chunk.shape[0], num_classes, device=chunk.device)
        votes.scatter_add_(1, train_labels[neighbours], (similarity / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_accuracy(train_features: Tensor, train_labels: Tensor, features: Tensor, labels: Tensor,
                 num_classes: int, k: int = 20, temperature: float = 0.07) -> float:
    predicted = weighted_knn_predict(train_features, train_labels, features, num_classes, k,
                                     temperature)
    return (predicted == labels).float().mean().item()
