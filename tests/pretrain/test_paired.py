"""Samples (index, views, sources, label) in every mode, and the view recipes."""

from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import PILToTensor

from mixdiff.config import load_config
from mixdiff.pretrain.input.datamodule import MixDiffDataModule
from mixdiff.data.decode import load_rgb_for
from mixdiff.pretrain.input.paired import build_samples
from mixdiff.data.tree import ImageTree
from mixdiff.pretrain.input.views import build_views
from mixdiff.errors import ConfigError, MissingSyntheticError

from conftest import make_tree, tiny_overrides


def _datamodule(tiny_data, **extra):
    dm = MixDiffDataModule(load_config(None, tiny_overrides(tiny_data, **extra)))
    dm.setup()
    return dm


def test_real_mode_views_are_all_real(tiny_data):
    dm = _datamodule(tiny_data, **{"data.mode": "real"})
    index, views, sources, label = dm.train_set[0]
    assert len(views) == 2 and views[0].shape == (3, 16, 16)
    assert sources.tolist() == [0, 0] and label == 0 and index == 0


def test_mixdiff_mode_second_view_is_a_synthetic_twin(tiny_data):
    dm = _datamodule(tiny_data, **{"data.mode": "mixdiff"})
    seen = {int(dm.train_set[i][2][1]) for i in range(len(dm.train_set)) for _ in range(3)}
    assert seen == {1, 2}  # both variants are drawn, never the real image with p_synthetic=1
    assert all(int(dm.train_set[i][2][0]) == 0 for i in range(len(dm.train_set)))


def test_p_synthetic_controls_the_fraction(tiny_data):
    dm = _datamodule(tiny_data, **{"data.mode": "mixdiff", "data.p_synthetic": 0.0})
    assert all(int(dm.train_set[i][2][1]) == 0 for i in range(len(dm.train_set)))
    torch.manual_seed(0)
    dm = _datamodule(tiny_data, **{"data.mode": "mixdiff", "data.p_synthetic": 0.5})
    draws = [int(dm.train_set[i % len(dm.train_set)][2][1] > 0) for i in range(400)]
    assert 0.4 < sum(draws) / 400 < 0.6


def test_synthetic_and_pooled_modes(tiny_data):
    syn = _datamodule(tiny_data, **{"data.mode": "synthetic"}).train_set
    for i in range(len(syn)):
        sources = syn[i][2].tolist()
        assert sources[0] == sources[1] and sources[0] in (1, 2)
    real = _datamodule(tiny_data, **{"data.mode": "real"}).train_set
    pooled = _datamodule(tiny_data, **{"data.mode": "pooled"}).train_set
    assert len(pooled) == 3 * len(real)  # real + two variants, each its own sample
    kinds = sorted(int(pooled[i][2][0]) for i in range(len(pooled)))
    assert kinds.count(0) == kinds.count(1) == kinds.count(2) == len(real)
    assert len({pooled[i][0] for i in range(len(pooled))}) == len(pooled)  # own indices


def test_real_fraction_and_holdout_are_stratified(tiny_data):
    dm = _datamodule(tiny_data, **{"data.real_fraction": 0.6})
    assert dm.summary["real_images_total"] == 18 and dm.summary["val_images"] == 3
    assert dm.summary["real_images_train"] == 9  # 60% of the 5 per class left after hold-out
    labels = [dm.train_set[i][3] for i in range(len(dm.train_set))]
    assert sorted(set(labels)) == [0, 1, 2]
    val_paths = set(dm.val_set.paths)
    train_paths = {s.real for s in dm.train_set.samples}
    assert not val_paths & train_paths  # the hold-out never trains
    with_val = _datamodule(tiny_data, **{"data.val": tiny_data["val"]})
    assert with_val.summary["val_images"] == 6 and with_val.summary["real_images_train"] == 18


def test_missing_twin_is_an_error_listing_it(tmp_path):
    real = make_tree(tmp_path / "real", per_class=2)
    syn = make_tree(tmp_path / "syn", per_class=2, ext=".jpg")
    (syn / "square" / "img01.jpg").unlink()
    tree = ImageTree.scan(real)
    with pytest.raises(MissingSyntheticError, match=r"(?s)square/img01\.\*.*fallback_real"):
        build_samples(tree, range(len(tree)), "mixdiff", [str(syn)], "error")
    samples = build_samples(tree, range(len(tree)), "mixdiff", [str(syn)], "fallback_real")
    assert sum(1 for s in samples if not s.twins) == 1


def test_dino_multicrop_slots(tiny_data):
    cfg = load_config(None, tiny_overrides(tiny_data, **{
        "method": "dino", "augment.recipe": "dino", "data.mode": "mixdiff",
        "augment.local_crops_real": 3, "augment.local_crops_synthetic": 2}))
    views = build_views(cfg)
    assert [v.slot for v in views] == ["anchor", "partner"] + ["anchor"] * 3 + ["partner"] * 2
    assert [v.teacher for v in views] == [True, True] + [False] * 5
    dm = MixDiffDataModule(cfg)
    dm.setup()
    _, crops, sources, _ = dm.train_set[0]
    assert [c.shape[-1] for c in crops] == [16, 16] + [7] * 5
    assert sources[0] == 0 and sources[1] > 0  # teacher crops: one real, one synthetic
    assert (sources[5:] > 0).all() and (sources[2:5] == 0).all()


def test_no_augmentation_recipe_is_deterministic(tiny_data):
    dm = _datamodule(tiny_data, **{"augment.recipe": "none"})
    _, views, _, _ = dm.train_set[0]
    assert torch.equal(views[0], views[1])


def test_plain_synthetic_views(tiny_data):
    dm = _datamodule(tiny_data, **{"data.mode": "synthetic", "augment.synthetic_augment": "false"})
    _, views, _, _ = dm.train_set[0]
    assert torch.equal(views[0], views[1])  # no augmentation on synthetic images


def test_backends_deliver_crops_or_finished_views(tiny_data):
    """batched: uint8 crops from the workers, finished on the device by the data module's
    transfer hooks; per_image: finished float views. A synthetic view with
    synthetic_augment=false is the same plain view either way."""
    extra = {"data.mode": "mixdiff", "augment.synthetic_augment": "false"}
    batched = _datamodule(tiny_data, **extra)
    per_image = _datamodule(tiny_data, **extra, **{"augment.backend": "per_image"})
    _, crops, sources, _ = batched.train_set[0]
    _, finished, _, _ = per_image.train_set[0]
    assert [c.dtype for c in crops] == [torch.uint8] * 2 and crops[0].shape == (3, 16, 16)
    assert [f.dtype for f in finished] == [torch.float32] * 2
    assert per_image.batch_augment is None and sources.tolist()[1] > 0
    batch = next(iter(batched.train_dataloader()))
    index, views, sources, labels = batched.prepare_batch(batch, torch.device("cpu"))
    assert [v.dtype for v in views] == [torch.float32] * 2 and views[1].shape == (4, 3, 16, 16)
    assert torch.equal(index, batch[0]) and (sources[:, 1] > 0).all()
    plain = per_image.train_set.views[1].plain  # the per-image plain view...
    for i, sample in enumerate(index.tolist()):  # ...of the twin this batch drew
        path = dict(per_image.train_set.samples[sample].twins)[int(sources[i, 1]) - 1]
        expected = plain(PILToTensor()(load_rgb_for(path, batched.train_set.needs["partner"])))
        torch.testing.assert_close(views[1][i], expected, atol=1e-6, rtol=0)


def test_filtered_twins_are_never_read(tiny_data, tmp_path, monkeypatch):
    """data.synthetic_scores + data.synthetic_min_similarity: a twin scored below the threshold
    never appears as a view (counted in the files the loader reads), a sample left without twins
    uses real views, and data.json says how many were dropped."""
    import mixdiff.pretrain.input.paired as paired
    from mixdiff.data.twin_scores import write_scores

    rows, low = [], set()
    for n, root in enumerate((tiny_data["syn0"], tiny_data["syn1"])):
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            similarity = 0.1 if (n == 0 or path.stem.endswith(("0", "2"))) else 0.9
            if similarity < 0.5:
                low.add(str(path.resolve()))
            rows.append({"twin": str(path), "real": "", "root": str(root),
                         "class_kept": 1, "similarity": similarity})
    scores = tmp_path / "scores.csv"
    write_scores(scores, rows)
    read = []
    original = paired.load_rgb_for
    monkeypatch.setattr(paired, "load_rgb_for",
                        lambda path, need: read.append(str(Path(path).resolve())) or
                        original(path, need))
    dm = _datamodule(tiny_data, **{"data.mode": "mixdiff", "data.synthetic_scores": scores,
                                   "data.synthetic_min_similarity": 0.5,
                                   "augment.backend": "per_image"})
    for seed in range(8):
        for i in range(len(dm.train_set)):
            _, _, sources, _ = dm.train_set[(i, seed)]
    synthetic_read = {p for p in read if "syn" in Path(p).parts[-3]}
    assert synthetic_read and not synthetic_read & low  # kept twins are read, dropped never
    unfiltered = _datamodule(tiny_data, **{"data.mode": "mixdiff"}).train_set.samples
    before = [str(Path(path).resolve()) for s in unfiltered for _, path in s.twins]
    after = [str(Path(path).resolve()) for s in dm.train_set.samples for _, path in s.twins]
    assert sorted(after) == sorted(p for p in before if p not in low)
    assert dm.summary["synthetic_twins_dropped"] == len(before) - len(after) > 0
    assert any(not s.twins for s in dm.train_set.samples)  # all twins dropped: real views
    with pytest.raises(ConfigError, match="data.synthetic_scores"):
        load_config(None, tiny_overrides(tiny_data, **{"data.synthetic_min_similarity": 0.5}))


def test_extra_mode_adds_views_of_twins_from_distinct_roots(tiny_data):
    """data.mode=extra: the recipe's views stay real and each twin slot holds another root's twin,
    drawn from the sample's draw seed alone; a sample without twins fills them with its image."""
    from mixdiff.pretrain.input.paired import PairedDataset, Sample

    dm = _datamodule(tiny_data, **{"data.mode": "extra", "data.synthetic_views": 2})
    views = dm.train_set.views
    assert [v.slot for v in views] == ["anchor", "partner", "twin0", "twin1"]
    orders = set()
    for seed in range(6):
        for i in range(len(dm.train_set)):
            _, crops, sources, _ = dm.train_set[(i, seed)]
            assert len(crops) == 4 and sources[:2].tolist() == [0, 0]
            assert sorted(sources[2:].tolist()) == [1, 2]  # one view from each root
            assert torch.equal(sources, dm.train_set[(i, seed)][2])  # same seed, same draw
            orders.add(tuple(sources[2:].tolist()))
    assert orders == {(1, 2), (2, 1)}
    one = _datamodule(tiny_data, **{"data.mode": "extra"})
    assert {int(one.train_set[(i, s)][2][2]) for i in range(6) for s in range(4)} == {1, 2}
    alone = PairedDataset([Sample(0, 0, dm.train_set.samples[0].real, ())], views, "extra",
                          backend="batched")
    assert alone[(0, 0)][2].tolist() == [0, 0, 0, 0]


def test_extra_mode_dino_twin_crops_are_the_students_alone(tiny_data):
    cfg = load_config(None, tiny_overrides(tiny_data, **{
        "method": "dino", "augment.recipe": "dino", "data.mode": "extra",
        "augment.local_crops_real": 2, "augment.local_crops_synthetic": 1}))
    views = build_views(cfg)
    assert [v.slot for v in views] == ["anchor", "partner", "twin0", "anchor", "anchor",
                                       "partner"]
    assert [v.teacher for v in views] == [True, True, False, False, False, False]
    assert [v.size for v in views] == [16, 16, 16, 7, 7, 7]  # twin: a global crop
    assert views[2].photometric == views[1].photometric  # augmented as the partner view


@pytest.mark.parametrize("setting", ["data.synthetic_views=2", "data.synthetic_weight=0.5"])
def test_extra_settings_outside_extra_mode_are_refused(tiny_data, setting):
    key, value = setting.split("=")
    with pytest.raises(ConfigError, match=f"`{key}`.*needs data.mode=extra"):
        load_config(None, tiny_overrides(tiny_data, **{"data.mode": "mixdiff", key: value}))
    with pytest.raises(ConfigError, match="data.synthetic_views.*= 3.*2 root"):
        load_config(None, tiny_overrides(tiny_data, **{"data.mode": "extra",
                                                       "data.synthetic_views": 3}))
