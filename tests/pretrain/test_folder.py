"""`mixdiff.PairedImageFolder`: the pairing as a public Dataset, against the views `mixdiff
pretrain` draws for the same seed, in every data mode; and with anyone's transform."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_overrides
from PIL import Image
from torchvision.transforms import v2

import mixdiff
from mixdiff.config import MODE_NAMES, load_config
from mixdiff.errors import ConfigError
from mixdiff.pretrain.input.datamodule import MixDiffDataModule, ResumableSampler


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_the_same_views_as_pretrain_draws_for_the_same_seed(tiny_data, mode):
    cfg = load_config(None, tiny_overrides(tiny_data, **{
        "data.mode": mode, "data.val": tiny_data["val"], "augment.backend": "per_image",
        "trainer.seed": 7}))
    module = MixDiffDataModule(cfg)
    module.setup()
    sampler = ResumableSampler(module.train_set, 7, module.epoch_samples)
    sampler.set_epoch(1)
    keys = list(sampler)[:6]
    folder = mixdiff.PairedImageFolder(tiny_data["real"], [tiny_data["syn0"], tiny_data["syn1"]],
                                       mode=mode, image_size=16)
    assert len(folder) == len(module.train_set)
    for key in keys:
        index, views, sources, label = module.train_set[key]
        mine = folder.draw(key)
        assert mine[0] == index and mine[3] == label and torch.equal(mine[2], sources)
        assert len(mine[1]) == len(views) and all(torch.equal(a, b)
                                                  for a, b in zip(mine[1], views))
        shown, shown_label = folder[key]  # the public item: (views, label)
        assert shown_label == label and all(torch.equal(a, b) for a, b in zip(shown, views))
    if mode in ("mixdiff", "extra"):  # views of the twins are among them
        assert any(int(folder.draw(key)[2][-1]) > 0 for key in keys)


def test_any_transform_gets_each_views_pil_image(tiny_data):
    seen = []

    def record(image):
        seen.append(image)
        return v2.functional.pil_to_tensor(image)

    folder = mixdiff.PairedImageFolder(tiny_data["real"], [tiny_data["syn0"]], mode="mixdiff",
                                       transform=record, views=3)
    views, label = folder[0]
    assert len(views) == 3 and all(isinstance(image, Image.Image) for image in seen)
    _, _, sources, _ = folder.draw(0)
    assert sources.tolist() == [0, 1, 1]  # the real image first, then the twin
    real = v2.functional.pil_to_tensor(Image.open(tiny_data["real"] / "circle" /
                                                  "img00.png").convert("RGB"))
    assert torch.equal(views[0], real) and not torch.equal(views[1], real)
    # one transform per view, in order
    per_view = mixdiff.PairedImageFolder(tiny_data["real"], mode="real",
                                         transform=[lambda im: "a", lambda im: "b"])
    assert per_view[0][0] == ["a", "b"]
    with pytest.raises(ConfigError, match="makes 2 views, but this dataset draws 3"):
        mixdiff.PairedImageFolder(tiny_data["real"], [tiny_data["syn0"]], mode="extra",
                                  transform=[str, str])


def test_lightlys_multi_view_transform_gives_one_view_per_slot(tiny_data):
    transforms = pytest.importorskip("lightly.transforms")
    simclr = transforms.SimCLRTransform(input_size=16, gaussian_blur=0.0)
    folder = mixdiff.PairedImageFolder(tiny_data["real"], [tiny_data["syn0"]], mode="mixdiff",
                                       transform=simclr)
    views, _ = folder[0]
    assert len(views) == 2 and all(view.shape == (3, 16, 16) for view in views)


def test_bad_arguments_name_themselves(tiny_data):
    with pytest.raises(ConfigError, match="mode 'twins'"):
        mixdiff.PairedImageFolder(tiny_data["real"], mode="twins")
    with pytest.raises(ConfigError, match="data.synthetic"):
        mixdiff.PairedImageFolder(tiny_data["real"], mode="mixdiff")
    with pytest.raises(ConfigError, match="views=3: the simclr recipe makes 2"):
        mixdiff.PairedImageFolder(tiny_data["real"], mode="real", views=3)
