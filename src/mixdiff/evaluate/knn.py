"""Weighted k-nearest-neighbour classification of features (DINO's protocol: cosine similarity,
votes weighted by exp(similarity / T)); used by the online kNN during training and by
`mixdiff eval knn`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mixdiff.evaluate.features import Encoder, ImageSet
from mixdiff.evaluate.results import accuracies, result_name, write_result

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


def knn_eval(encoder: Encoder, train: ImageSet, val: ImageSet, name: str | None = None,
             ks: Sequence[int] = DEFAULT_KS, temperature: float = DEFAULT_TEMPERATURE,
             batch_size: int = 256, num_workers: int | None = None,
             show_progress: bool = True) -> Path:
    """Weighted kNN of the val images among the training images (headline: the first k); returns
    the result file written."""
    ks = tuple(dict.fromkeys(ks))
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be positive, got {ks}")
    bank = encoder.encode(train, batch_size=batch_size, num_workers=num_workers,
                          show_progress=show_progress)
    queries = encoder.encode(val, batch_size=batch_size, num_workers=num_workers,
                             show_progress=show_progress)
    votes = weighted_knn_votes(bank.to(encoder.device), torch.from_numpy(train.labels), queries,
                               len(train.classes), ks, temperature)
    labels = torch.from_numpy(val.labels)
    per_k = {str(k): accuracies(v, labels) for k, v in votes.items()}
    headline = per_k[str(ks[0])]
    result = {
        "command": "knn",
        "protocol": f"offline weighted kNN (cosine, k={ks[0]}, T={temperature}) on frozen "
                    "features; bank = the training images, scored on the val images",
        "online": False, "dataset": val.name, "split": val.split, "classes": len(val.classes),
        "images": len(val), **headline, "metric": "top1", "value": headline["top1"],
        "weights": encoder.weights, "checkpoint": encoder.checkpoint_record(),
        "settings": {"k": list(ks), "temperature": temperature, "train": train.root,
                     "val": val.root, "bank_images": len(train), **encoder.settings()},
        "details": {"per_k": per_k},
    }
    return write_result(encoder.run, "knn", result_name(train.name, encoder.weights,
                                                        encoder.default_weights, name), result)
