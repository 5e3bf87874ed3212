"""The robustness suites: the ImageNet class data, each suite's on-disk layout, the restriction to
a probe's classes (ImageNet-100's overlaps), logit masking, ObjectNet's groups and border, VizWiz's
multi-label scoring and prediction file, and `mixdiff eval robustness` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixdiff.errors import MixDiffError
from mixdiff.evaluate import imagenet
from mixdiff.evaluate.robustness import SUITES, predictions, score, vizwiz_prediction_file
from mixdiff.evaluate.suites import (SuiteLayoutError, border_crop, read_imagenet_a,
                                     read_imagenet_r, read_imagenet_sketch, read_imagenet_v2,
                                     read_labelled_tree, read_objectnet, read_vizwiz, restrict)

IN100 = tuple(sorted(imagenet.imagenet100_wnids()))  # an ImageFolder over IN-100: sorted wnids
IN1K = imagenet.in1k_wnids()


def write_images(folder: Path, count: int = 1, size: int = 8, colour=(90, 120, 150)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (size, size), colour).save(folder / f"img{i}.png")


def tree(root: Path, folders, count: int = 1) -> Path:
    for name in folders:
        write_images(root / name, count)
    return root


def logits_for(probe_classes, rows: list[dict[str, float]]) -> torch.Tensor:
    """Logits of a probe over `probe_classes`: 0 everywhere but the given {class: value}."""
    out = torch.zeros(len(rows), len(probe_classes))
    position = {c: i for i, c in enumerate(probe_classes)}
    for r, row in enumerate(rows):
        for name, value in row.items():
            out[r, position[name]] = value
    return out


# ------------------------------------------------------------------------------ class data
def test_imagenet_class_data_is_consistent():
    assert len(IN1K) == 1000 and list(IN1K) == sorted(IN1K)  # the index is the sorted position
    assert len(set(imagenet.in1k_names())) == 1000
    assert imagenet.class_name("n01440764") == "tench" and IN1K[999] == "n15075141"
    assert len(IN100) == 100 and set(IN100) <= set(IN1K)
    for listed in (imagenet.imagenet_a_wnids(), imagenet.imagenet_r_wnids()):
        assert len(listed) == 200 and listed <= set(IN1K)
    groups = imagenet.objectnet_label_wnids()
    assert len(groups) == 113 and len(frozenset().union(*groups.values())) == 125
    assert set(groups) <= set(imagenet.objectnet_folder_labels().values())
    assert len(imagenet.objectnet_folder_labels()) == 313


# ----------------------------------------------------------- ImageNet-100's overlaps (overlap.md)
def test_imagenet100_overlaps_with_the_real_lists(tmp_path):
    """A probe fitted on ImageNet-100 is scored on the classes it shares with each set: 15 with
    ImageNet-A, 19 with ImageNet-R, 13 (IN-1k and ObjectNet classes alike) with ObjectNet."""
    a = restrict(read_imagenet_a(tree(tmp_path / "a", sorted(imagenet.imagenet_a_wnids()))), IN100)
    assert len(a.classes) == len(a.suite_classes) == len(a.images) == 15
    assert len(a.outside_probe) == 185 and not a.unknown_folders
    assert {"n01558993", "n07831146"} <= set(a.classes)  # robin, carbonara

    r = restrict(read_imagenet_r(tree(tmp_path / "r", sorted(imagenet.imagenet_r_wnids()))), IN100)
    assert len(r.classes) == len(r.suite_classes) == len(r.images) == 19
    assert {"n01820546", "n07753275"} <= set(r.classes)  # lorikeet, pineapple

    on = read_objectnet(tree(tmp_path / "objectnet-1.0" / "images",
                             sorted(imagenet.objectnet_folder_labels())))
    assert len(on.excluded_folders) == 313 - 113  # ObjectNet classes ImageNet lacks
    o = restrict(on, IN100)
    assert len(o.classes) == 13 and len(o.suite_classes) == 13 and len(o.images) == 13
    assert "Chair" in o.suite_classes and "n04099969" in o.classes  # via rocking chair only


# ----------------------------------------------------------------------------- layouts
def test_imagenet_v2_folders_are_class_indices_not_sorted_strings(tmp_path):
    images = read_imagenet_v2(tree(tmp_path / "v2", ["2", "10", "100"]))
    labels = {rel.split("/")[0]: next(iter(lab)) for rel, lab in zip(images.relpaths, images.labels)}
    assert labels == {"2": IN1K[2], "10": IN1K[10], "100": IN1K[100]}
    selection = restrict(images, IN1K)
    assert len(selection.classes) == 1000  # V2 is not masked: all the probe's classes compete


@pytest.mark.parametrize("reader, folders, expected, found", [
    (read_imagenet_v2, ["n01440764", "n01443537"], "named by its IN-1k index 0..999",
     "2 folders named by ImageNet wnid"),
    (read_imagenet_r, ["0", "1", "10"], "named by its ImageNet wnid",
     "3 folders named by class index (ImageNetV2's layout"),
    (read_imagenet_sketch, ["cats", "dogs"], "named by its ImageNet wnid", "2 other folders"),
    (read_objectnet, ["n01440764"], "ObjectNet's layout", "1 folders named by ImageNet wnid"),
])
def test_a_wrong_layout_names_the_expected_and_the_found(tmp_path, reader, folders, expected, found):
    with pytest.raises(SuiteLayoutError) as caught:
        reader(tree(tmp_path / "set", folders))
    message = str(caught.value)
    assert expected in message and found in message and str(tmp_path / "set") in message


def test_unknown_folders_are_listed_not_dropped(tmp_path):
    """In ImageNet-R: a folder that is no ImageNet-R class but a probe class is scored; one that
    is neither (a stray wnid, a non-wnid folder) is listed with its image count."""
    root = tree(tmp_path / "r", ["n01443537", "n01440764", "n99999999", "extras"], count=2)
    probe = ("n01440764", "n01443537", "n01484850")  # tench, goldfish, great white shark
    selection = restrict(read_imagenet_r(root), probe)
    assert "n01443537" in imagenet.imagenet_r_wnids()  # goldfish is an ImageNet-R class
    assert "n01440764" not in imagenet.imagenet_r_wnids()  # tench is not, but the probe has it
    assert selection.classes == ("n01440764", "n01443537")  # masked to the folders present
    assert selection.unknown_folders == {"extras": 2, "n99999999": 2}
    assert len(selection.images) == 4


def test_a_probe_without_wnids_gets_a_clear_error(tmp_path):
    images = read_imagenet_a(tree(tmp_path / "a", ["n01498041"]))
    with pytest.raises(MixDiffError, match="not ImageNet wnids.*--suite corruptions"):
        restrict(images, ("circle", "square", "stripes"))


def test_corruption_tree_lists_folders_the_run_lacks(tmp_path):
    selection = restrict(read_labelled_tree(tree(tmp_path / "t", ["circle", "square", "oval"])),
                         ("circle", "square", "stripes"))
    assert selection.classes == ("circle", "square", "stripes")  # not masked
    assert selection.unknown_folders == {"oval": 1} and len(selection.images) == 2


# ------------------------------------------------------------------------- masking, scoring
def test_a_class_absent_from_the_set_is_never_predicted(tmp_path):
    """ImageNet-A has goldfish (n01443537) but not tench (n01440764): even when tench has the
    highest logit, the prediction is among the classes of the set."""
    probe = ("n01440764", "n01443537", "n01484850")
    selection = restrict(read_imagenet_a(tree(tmp_path / "a", ["n01443537"], count=3)), probe)
    assert selection.classes == ("n01443537",)
    logits = logits_for(probe, [{"n01440764": 9.0, "n01443537": 1.0},
                                {"n01440764": 5.0, "n01443537": -3.0},
                                {"n01484850": 2.0}])
    assert predictions(logits, selection) == ["n01443537"] * 3
    assert score(logits, selection)["top1"] == 1.0
    unmasked = restrict(read_imagenet_sketch(tmp_path / "a"), probe)  # Sketch: no mask
    assert predictions(logits, unmasked) == ["n01440764", "n01440764", "n01484850"]
    assert score(logits, unmasked)["top1"] == 0.0


def test_objectnet_groups_and_border(tmp_path):
    """ObjectNet's folder `chair` is its label 'Chair', which three IN-1k chairs answer: a
    prediction of any of them is correct; the logits are masked to ObjectNet's 125 classes."""
    root = tmp_path / "images"
    tree(root, ["chair", "alarm_clock", "banana"])
    write_images(root / "dog_bed")  # an ObjectNet class ImageNet lacks: excluded, counted
    write_images(root / "mystery")  # not an ObjectNet folder: listed
    images = read_objectnet(tmp_path)  # the release folder: its images/ is found
    assert images.excluded_folders == {"dog_bed": 1}
    probe = IN1K
    selection = restrict(images, probe)
    assert len(selection.classes) == 125 and selection.unknown_folders == {"mystery": 1}
    order = [next(iter(images.labels[i])) for i in selection.images]
    assert order == ["Alarm clock", "Banana", "Chair"]
    folding_chair, digital_clock, tench = "n03376595", "n03196217", "n01440764"
    logits = logits_for(probe, [{digital_clock: 3.0, tench: 9.0},  # clock: correct, tench masked
                                {folding_chair: 2.0},               # banana: wrong
                                {folding_chair: 2.0}])              # chair: folding chair counts
    assert predictions(logits, selection) == [digital_clock, folding_chair, folding_chair]
    assert score(logits, selection)["top1"] == pytest.approx(2 / 3)

    framed = Image.new("RGB", (10, 8), (255, 0, 0))
    framed.paste((20, 40, 60), (1, 1, 9, 7))
    cropped = border_crop(framed, 0)
    assert cropped.size == (8, 6) and set(cropped.getdata()) == {(20, 40, 60)}
    assert SUITES["objectnet"].pre_transform is border_crop and SUITES["objectnet"].tag


def write_vizwiz(root: Path, labels: dict | None) -> Path:
    categories = [{"id": 409, "wordnet_id": IN1K[409]}, {"id": 530, "wordnet_id": IN1K[530]},
                  {"id": 954, "wordnet_id": IN1K[954]}]  # analog clock, digital clock, banana
    names = [f"VizWiz_test_{i:08d}.jpg" for i in range(6)]
    for name in names:
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 10), (10, 20, 30)).save(root / "images" / name)
    (root / "annotations.json").write_text(json.dumps({"categories": categories, "images": names}))
    if labels is not None:
        (root / "labels.json").write_text(json.dumps(labels))
    return root


def test_vizwiz_multi_label_scoring_and_prediction_file(tmp_path):
    """Six images; the probe knows analog clock (409), digital clock (530), banana (954) and
    tench (0), which VizWiz lacks. By hand: image 0 {409, 530} predicted 530 -> correct; image 1
    {954} predicted 409 -> wrong; image 2 {530, 954} predicted 954 (tench's higher logit is
    masked) -> correct; image 3 {409} predicted 409 -> correct; image 4 unlabelled and image 5
    {goldfish (1), which the probe lacks} -> predicted for the server, not scored. Top-1 = 3 / 4."""
    labels = {"VizWiz_test_00000000.jpg": [409, 530], "VizWiz_test_00000001.jpg": {"labels": [954]},
              "VizWiz_test_00000002.jpg": [530, 954], "VizWiz_test_00000003.jpg": [409],
              "VizWiz_test_00000005.jpg": [1]}
    images = read_vizwiz(write_vizwiz(tmp_path / "dataset", labels))
    probe = (IN1K[0], IN1K[409], IN1K[530], IN1K[954])
    selection = restrict(images, probe, predict_all=True)
    assert selection.classes == probe[1:] and len(selection.images) == 6
    assert selection.scored.tolist() == [True, True, True, True, False, False]
    logits = logits_for(probe, [{IN1K[530]: 2.0}, {IN1K[409]: 1.0},
                                {IN1K[0]: 8.0, IN1K[954]: 1.0}, {IN1K[409]: 1.0},
                                {IN1K[954]: 1.0}, {IN1K[530]: 1.0}])
    assert score(logits, selection, top5=False) == {"top1": 0.75}
    entries = vizwiz_prediction_file(images, selection, predictions(logits, selection))
    assert entries == [["VizWiz_test_00000000.jpg", 530], ["VizWiz_test_00000001.jpg", 409],
                       ["VizWiz_test_00000002.jpg", 954], ["VizWiz_test_00000003.jpg", 409],
                       ["VizWiz_test_00000004.jpg", 954], ["VizWiz_test_00000005.jpg", 530]]


def test_vizwiz_layout_and_annotation_errors(tmp_path):
    with pytest.raises(SuiteLayoutError, match="expects VizWiz-Classification's layout"):
        read_vizwiz(tree(tmp_path / "wrong", ["n01440764"]))
    root = write_vizwiz(tmp_path / "dataset", None)
    public = read_vizwiz(root)  # the public file: no labels, every image still predicted
    assert not any(public.labels) and len(public.relpaths) == 6
    (root / "labels.json").write_text(json.dumps({"VizWiz_test_00000000.jpg": [1000]}))
    with pytest.raises(MixDiffError, match="1000 is not an IN-1k class index"):
        read_vizwiz(root)
    (root / "labels.json").unlink()
    (root / "images" / "VizWiz_test_00000003.jpg").unlink()
    with pytest.raises(MixDiffError, match="1 of the 6 images in annotations.json are missing"):
        read_vizwiz(root)


# ------------------------------------------------------------------ end to end, through the CLI
WNIDS = ("n02701002", "n04099969", "n07753592")  # ambulance 407, rocking chair 765, banana 954


@pytest.fixture(scope="session")
def wnid_run(tmp_path_factory):
    """A tiny real run whose class folders are wnids, with its linear probe (`eval linear`)."""
    from conftest import make_tree, tiny_overrides
    from typer.testing import CliRunner

    from mixdiff.cli import app
    from mixdiff.config import load_config
    from mixdiff.pretrain.train import pretrain

    base = tmp_path_factory.mktemp("wnid-run")
    data = {"real": make_tree(base / "tiny-imagenet" / "train", classes=WNIDS),
            "syn0": make_tree(base / "syn0", ext=".jpg", seed=1, classes=WNIDS),
            "syn1": make_tree(base / "syn1", seed=2, classes=WNIDS),
            "val": make_tree(base / "tiny-imagenet" / "val", 3, seed=3, classes=WNIDS)}
    run = base / "run"
    pretrain(load_config(None, tiny_overrides(data)), run)
    fitted = CliRunner().invoke(app, ["eval", "linear", "--run", str(run), "--train",
                                      str(data["real"]), "--val", str(data["val"]),
                                      "--device", "cpu", "--num-workers", "0"])
    assert fitted.exit_code == 0, fitted.output
    return run, data


def run_suite(run: Path, suite: str, root: Path, *extra: str):
    from typer.testing import CliRunner

    from mixdiff.cli import app
    return CliRunner().invoke(app, ["eval", "robustness", "--run", str(run), "--suite", suite,
                                    "--root", str(root), "--device", "cpu", "--num-workers", "0",
                                    *extra])


def cached_tags(run: Path) -> list[str]:
    return sorted(torch.load(p, weights_only=True)["tag"]
                  for p in (run / "cache" / "features").glob("*.pt"))


def read_result(run: Path, name: str) -> dict:
    return json.loads((run / "eval" / "robustness" / f"{name}.json").read_text())


def test_cli_imagenet_r_scores_the_shared_classes_and_lists_unknown_folders(wnid_run, tmp_path):
    from conftest import make_tree

    run, _ = wnid_run
    # ambulance and banana are ImageNet-R classes; rocking chair is not but the run has it;
    # goldfish is an ImageNet-R class the run lacks; n99999999 and misc are neither
    root = make_tree(tmp_path / "imagenet-r", 2, classes=WNIDS + ("n01443537", "n99999999", "misc"))
    result = run_suite(run, "imagenet-r", root)
    assert result.exit_code == 0, result.output
    assert "n99999999 (2 images)" in result.output and "misc (2 images)" in result.output
    saved = read_result(run, "imagenet-r")
    assert saved["command"] == "robustness" and saved["dataset"] == "imagenet-r"
    assert saved["online"] is False and saved["split"] == "test"
    assert saved["classes"] == 3 and saved["images"] == 6 and "top5" not in saved
    assert 0 <= saved["top1"] <= 1 and saved["value"] == saved["top1"]
    assert saved["weights"] == "student" and len(saved["checkpoint"]["sha256"]) == 64
    assert saved["details"]["unknown_folders"] == {"misc": 2, "n99999999": 2}
    assert saved["details"]["classes_outside_probe"] == 1 and saved["details"]["logits"] == 3
    assert saved["settings"]["probe"] == "tiny-imagenet"
    assert "3 classes the probe shares" in saved["protocol"]

    tags = cached_tags(run)
    again = run_suite(run, "imagenet-r", root, "--run", str(run))  # two runs: one table
    assert again.exit_code == 0, again.output
    assert cached_tags(run) == tags  # the features came from the cache
    assert read_result(run, "imagenet-r")["top1"] == saved["top1"]


def test_cli_objectnet_groups_and_border_crop(wnid_run, tmp_path):
    from conftest import make_tree

    run, _ = wnid_run
    images = make_tree(tmp_path / "objectnet-1.0" / "images", 2,
                       classes=("chair", "banana", "alarm_clock"))
    for path in images.rglob("*.png"):  # ObjectNet's 1-pixel border
        framed = Image.open(path).convert("RGB")
        framed.paste((255, 0, 0), (0, 0, framed.width, 1))
        framed.save(path)
    result = run_suite(run, "objectnet", tmp_path / "objectnet-1.0")
    assert result.exit_code == 0, result.output
    saved = read_result(run, "objectnet")
    # Chair (via rocking chair) and Banana are scored; Alarm clock's clocks are not run classes
    assert saved["classes"] == 2 and saved["images"] == 4
    assert saved["details"]["classes_scored"] == ["Banana", "Chair"]
    assert saved["details"]["logits"] == 2 and saved["details"]["masked"] is True

    # the cached features are those of the images without their border
    from mixdiff.evaluate.features import Encoder, ImageSet
    from mixdiff.evaluate.options import EncodeOptions

    cache = next(torch.load(p, weights_only=True) for p in (run / "cache" / "features").glob("*.pt")
                 if torch.load(p, weights_only=True)["tag"] == "objectnet-border-crop")
    scored = [images / c / f"img{i:02d}.png" for c in ("banana", "chair") for i in range(2)]
    cropped = []
    for path in scored:
        framed = Image.open(path)
        cropped.append(tmp_path / f"cropped-{path.parent.name}-{path.name}")
        framed.crop((1, 1, framed.width - 1, framed.height - 1)).save(cropped[-1])
    encoder = Encoder.from_run(run, device="cpu")

    def encode(paths, name):
        image_set = ImageSet(name, "test", tuple(map(str, paths)), np.full(4, -1), ())
        return encoder.encode(image_set,
                              options=EncodeOptions(num_workers=0, show_progress=False))

    assert torch.allclose(cache["features"].float(), encode(cropped, "cropped"), atol=1e-5)
    assert not torch.allclose(cache["features"].float(), encode(scored, "framed"), atol=1e-5)


def test_cli_wrong_layout_is_one_clear_line(wnid_run, tmp_path):
    from conftest import make_tree

    run, _ = wnid_run
    result = run_suite(run, "imagenet-v2", make_tree(tmp_path / "sketch", 1, classes=WNIDS))
    assert result.exit_code == 2
    assert "--suite imagenet-v2 expects one folder per class named by its IN-1k index" in \
        result.output and "3 folders named by ImageNet wnid" in result.output
    assert "Traceback" not in result.output


def test_cli_vizwiz_writes_the_server_file(wnid_run, tmp_path):
    run, _ = wnid_run
    root = tmp_path / "dataset"
    write_vizwiz(root, None)
    categories = [{"id": i, "wordnet_id": IN1K[i]} for i in (407, 409, 765, 954)]
    names = json.loads((root / "annotations.json").read_text())["images"]
    (root / "annotations.json").write_text(json.dumps({"categories": categories, "images": names}))

    public = run_suite(run, "vizwiz", root)  # no labels: the file for the server only
    assert public.exit_code == 0, public.output and "no result file written" in public.output
    assert not (run / "eval" / "robustness" / "vizwiz.json").exists()
    server_file = run / "eval" / "robustness" / "vizwiz" / "evalai_predictions.json"
    entries = json.loads(server_file.read_text())
    assert [name for name, _ in entries] == names
    assert {index for _, index in entries} <= {407, 765, 954}  # 409 is not a run class

    (root / "labels.json").write_text(json.dumps({names[0]: [407, 409], names[1]: [954],
                                                  names[2]: [409]}))
    labelled = run_suite(run, "vizwiz", root)
    assert labelled.exit_code == 0, labelled.output
    saved = read_result(run, "vizwiz")
    # image 2's only label (409) is no run class: 2 images scored, with labels of 2 classes,
    # predicted among the 3 categories the run has
    assert saved["images"] == 2 and saved["classes"] == 2 and saved["details"]["logits"] == 3
    assert saved["details"]["images_predicted"] == 6
    assert saved["details"]["prediction_file"] == str(server_file)
    predicted = dict(map(tuple, json.loads(server_file.read_text())))
    by_hand = ((predicted[names[0]] in (407, 409)) + (predicted[names[1]] == 954)) / 2
    assert saved["top1"] == by_hand


def test_cli_corruptions_grid_is_deterministic_and_cached(wnid_run):
    from mixdiff.evaluate.features import Encoder
    from mixdiff.evaluate.robustness import CorruptionView, eval_geometry

    run, data = wnid_run
    before = cached_tags(run)
    args = ("--corruptions", "gaussian_noise,pixelate,sketch", "--severities", "1,5")
    result = run_suite(run, "corruptions", data["val"], *args)
    assert result.exit_code == 0, result.output
    saved = read_result(run, "corruptions")
    grid = saved["details"]["top1_by_corruption"]
    assert grid.keys() == {"gaussian_noise", "pixelate", "sketch"}
    assert grid["gaussian_noise"].keys() == {"1", "5"} and grid["sketch"].keys() == {"single"}
    by_hand = np.mean([np.mean(list(v.values())) for v in grid.values()])
    assert saved["top1"] == pytest.approx(by_hand) and 0 <= saved["details"]["clean_top1"] <= 1
    assert saved["images"] == 9 and saved["classes"] == 3 and saved["dataset"] == "corruptions"
    assert saved["settings"]["pixel_scale"] == pytest.approx(16 / 224)
    # one encoding per (corruption, severity); the clean images reuse `eval linear`'s features
    added = sorted(set(cached_tags(run)) - set(before))
    assert added == sorted(f"corruption-v1/{c}/{s}" for c, s in [
        ("gaussian_noise", 1), ("gaussian_noise", 5), ("pixelate", 1), ("pixelate", 5),
        ("sketch", 0)])
    again = run_suite(run, "corruptions", data["val"], *args)
    assert again.exit_code == 0 and read_result(run, "corruptions")["details"] == saved["details"]

    # the same image, corruption and severity give the same pixels, whatever else is evaluated
    resize, crop = eval_geometry(Encoder.from_run(run, device="cpu").transform)
    image = Image.open(next(data["val"].rglob("*.png"))).convert("RGB")
    view = CorruptionView("gaussian_noise", 3, ("a/img.png", "b/img.png"), resize, crop / 224)
    assert view(image, 0).tobytes() == view(image, 0).tobytes()
    assert view(image, 0).tobytes() != view(image, 1).tobytes()  # another image, other noise
    assert view(image, 0).size == (18, 18)  # resized as the run's transform does, not cropped


def test_a_result_of_another_probe_is_not_overwritten(wnid_run, tmp_path):
    import shutil

    from conftest import make_tree
    from typer.testing import CliRunner

    from mixdiff.cli import app

    run = tmp_path / "run"
    shutil.copytree(wnid_run[0], run)
    other = make_tree(tmp_path / "other-set" / "train", 3, seed=7, classes=WNIDS)
    fitted = CliRunner().invoke(app, ["eval", "linear", "--run", str(run), "--train", str(other),
                                      "--val", str(other), "--device", "cpu",
                                      "--num-workers", "0"])
    assert fitted.exit_code == 0, fitted.output
    root = make_tree(tmp_path / "imagenet-r", 2, classes=WNIDS)
    first = run_suite(run, "imagenet-r", root, "--probe", "tiny-imagenet")
    assert first.exit_code == 0, first.output
    kept = (run / "eval" / "robustness" / "imagenet-r.json").read_bytes()
    refused = run_suite(run, "imagenet-r", root, "--probe", "other-set")
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2, refused.output
    assert "made with the probe 'tiny-imagenet'" in said and "--probe tiny-imagenet" in said
    assert (run / "eval" / "robustness" / "imagenet-r.json").read_bytes() == kept
    # another probe fitted on a dataset of the same name is another probe too
    same_name = make_tree(tmp_path / "copy" / "tiny-imagenet" / "train", 3, seed=8,
                          classes=WNIDS)
    fitted = CliRunner().invoke(app, ["eval", "linear", "--run", str(run), "--train",
                                      str(same_name), "--val", str(same_name), "--name",
                                      "second", "--device", "cpu", "--num-workers", "0"])
    assert fitted.exit_code == 0, fitted.output
    refused = run_suite(run, "imagenet-r", root, "--probe", "second")
    assert refused.exit_code == 2 and "--probe tiny-imagenet" in " ".join(refused.output.split())
    assert (run / "eval" / "robustness" / "imagenet-r.json").read_bytes() == kept
    again = run_suite(run, "imagenet-r", root, "--probe", "tiny-imagenet")  # the same probe: fine
    assert again.exit_code == 0, again.output
