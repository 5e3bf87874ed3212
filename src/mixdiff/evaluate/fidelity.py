"""How faithful a synthetic root is to its real images: does a classifier trained on the real
images still see the real image's class in its twin, and how far apart are their pixels?

The classifier is a run's saved linear probe (`mixdiff eval linear`), ideally of a run pre-trained
on real images only, so that the measure does not depend on the twins it judges. Its accuracy on
the real images themselves is reported beside the twins' agreement: the gap is what the generator
loses."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mixdiff.data.tree import ImageTree, load_rgb, match_twins
from mixdiff.errors import DatasetError
from mixdiff.evaluate.features import Encoder, ImageSet
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.evaluate.linear import load_probe


def mean_abs_pixel_difference(real: str | Path, twin: str | Path) -> float:
    """Mean |real - twin| over pixels and RGB channels, in [0, 1]; the twin is resized (bicubic)
    to the real image's size first."""
    a = load_rgb(real)
    b = load_rgb(twin)
    if b.size != a.size:
        b = b.resize(a.size, Image.BICUBIC)
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean() / 255)


def fidelity(real: str | Path, synthetic: str | Path, run: str | Path,
             probe: str | None = None, weights: str | None = None, device: str | None = None,
             show_progress: bool = True, scores: list[dict] | None = None) -> dict:
    """The fidelity of one synthetic root, as `mixdiff data verify --fidelity RUN` reports it.
    With a list as `scores`, one row per twin (SCORE_COLUMNS) is appended to it: whether the
    probe gives the twin its real image's class, and the cosine similarity of the two images'
    frozen features."""
    tree = ImageTree.scan(real)
    if not tree.labelled:
        raise DatasetError(f"{real}: fidelity needs class folders <class>/<image>")
    match = match_twins(tree.relpaths, synthetic)
    if not match.matched:
        raise DatasetError(f"{synthetic}: no twin of any image of {real}")
    positions = sorted(match.matched)
    encoder = Encoder.from_run(run, weights, device)
    classifier = load_probe(encoder.run, probe, encoder.weights, encoder.checkpoint_sha256)
    unknown = sorted(set(tree.classes) - set(classifier.classes))
    if unknown:
        raise DatasetError(f"the probe of {run} does not know the classes {unknown[:5]} of "
                           f"{real}: use a run trained on the same classes")
    to_probe = torch.tensor([classifier.classes.index(c) for c in tree.classes])
    labels = to_probe[torch.from_numpy(tree.labels[positions])]

    def features(paths: list[str], split: str) -> torch.Tensor:
        images = ImageSet(Path(real).name, split, tuple(paths), tree.labels[positions],
                          tree.classes)
        return encoder.encode(images, options=EncodeOptions(show_progress=show_progress))

    def predictions(encoded: torch.Tensor) -> torch.Tensor:
        return classifier.logits(encoded).argmax(dim=1).cpu()

    real_paths = [str(tree.path(i)) for i in positions]
    twin_paths = [str(Path(synthetic) / match.matched[i]) for i in positions]
    twin_features = features(twin_paths, f"twins:{Path(synthetic).resolve()}")
    real_features = features(real_paths, "fidelity-reference")
    agrees = predictions(twin_features) == labels
    real_correct = predictions(real_features) == labels
    if scores is not None:
        similarity = torch.nn.functional.cosine_similarity(twin_features, real_features, dim=1)
        scores.extend({"twin": twin, "real": source, "root": str(synthetic),
                       "class_kept": int(kept), "similarity": round(float(cosine), 6)}
                      for twin, source, kept, cosine in zip(twin_paths, real_paths,
                                                            agrees.tolist(), similarity.tolist()))
    per_class = Counter()
    for label, ok in zip(tree.labels[positions], agrees.tolist()):
        per_class[tree.classes[label]] += ok
    counts = Counter(tree.classes[label] for label in tree.labels[positions])
    distances = [mean_abs_pixel_difference(r, t) for r, t in zip(real_paths, twin_paths)]
    return {
        "root": str(synthetic), "twins": len(positions),
        "class_agreement": agrees.float().mean().item(),
        "real_accuracy": real_correct.float().mean().item(),
        "class_agreement_per_class": {c: per_class[c] / counts[c] for c in sorted(counts)},
        "mean_abs_pixel_difference": float(np.mean(distances)),
        "classifier": {"run": str(encoder.run.root), "probe": classifier.dataset,
                       "weights": encoder.weights, "checkpoint": encoder.checkpoint_record()},
        "protocol": "share of twins that the run's linear probe assigns to their real image's "
                    "class (class_agreement), beside the probe's accuracy on those real images "
                    "(real_accuracy); mean absolute RGB difference in [0, 1] after resizing the "
                    "twin to the real image",
    }
