"""`mixdiff eval knn`: the weighted kNN of `mixdiff.knn` on a run's frozen features, written as a
result."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from mixdiff.evaluate.features import Encoder, ImageSet
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.evaluate.predictions import Predictions, knn_condition
from mixdiff.evaluate.results import (TRAIN_FINGERPRINT, accuracies, refuse_another_measurement,
                                      result_name, write_result)
from mixdiff.knn import DEFAULT_KS, DEFAULT_TEMPERATURE, weighted_knn_votes


def knn_eval(encoder: Encoder, train: ImageSet, val: ImageSet, name: str | None = None,
             ks: Sequence[int] = DEFAULT_KS, temperature: float = DEFAULT_TEMPERATURE,
             options: EncodeOptions = EncodeOptions()) -> Path:
    """Weighted kNN of the val images among the training images (headline: the first k); returns
    the result file written."""
    ks = tuple(dict.fromkeys(ks))
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be positive, got {ks}")
    name = result_name(train.name, encoder.weights, encoder.default_weights, name)
    measured = {"k": list(ks), "temperature": temperature, "train": train.root, "val": val.root}
    scored, trained = val.content_sha256(), train.tree_fingerprint()
    refuse_another_measurement(encoder.run.eval_result("knn", name), measured,
                               (len(val), scored), trained)
    bank, queries = encoder.encode(train, options=options), encoder.encode(val, options=options)
    votes = weighted_knn_votes(bank.to(encoder.device), torch.from_numpy(train.labels), queries,
                               len(train.classes), ks, temperature)
    labels = torch.from_numpy(val.labels)
    per_k = {str(k): accuracies(v, labels) for k, v in votes.items()}
    predictions = Predictions.single(val.relative_names(), val.classes, val.labels,
                                     {knn_condition(k): v.argmax(1).cpu().numpy()
                                      for k, v in votes.items()})
    headline = per_k[str(ks[0])]
    result = {
        "command": "knn",
        "protocol": f"offline weighted kNN (cosine, k={ks[0]}, T={temperature}) on frozen "
                    "features; bank = the training images, scored on the val images",
        "online": False, "dataset": val.name, "split": val.split, "classes": len(val.classes),
        "images": len(val), "images_sha256": scored, **headline, "metric": "top1",
        "value": headline["top1"],
        "weights": encoder.weights, "checkpoint": encoder.checkpoint_record(),
        "settings": {**measured, "bank_images": len(train), TRAIN_FINGERPRINT: trained,
                     **encoder.settings()},
        "details": {"per_k": per_k},
    }
    return write_result(encoder.run, "knn", name, result, predictions)
