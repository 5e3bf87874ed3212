import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.data import fashion_mnist
from mixdiff.data.splits import stratified_holdout, stratified_subset
from mixdiff.data.tree import ImageTree, load_rgb, match_twins, twin_key
from mixdiff.errors import DatasetError, UnreadableImageError

from conftest import make_tree

runner = CliRunner()


def test_twin_key_ignores_extension():
    assert twin_key("cls/a.JPEG") == twin_key("cls/a.png") == "cls/a"
    assert twin_key("cls/sub/a.b.jpg") == "cls/sub/a.b"


def test_scan_labels_and_twins(tmp_path):
    real = make_tree(tmp_path / "real", per_class=3)
    syn = make_tree(tmp_path / "syn", per_class=3, ext=".jpg")
    (syn / "circle" / "img00.jpg").unlink()
    Image.new("RGB", (4, 4)).save(syn / "square" / "stray.png")
    tree = ImageTree.scan(real)
    assert tree.classes == ("circle", "square", "stripes")
    assert len(tree) == 9 and tree.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    match = match_twins(tree.relpaths, syn)
    assert match.missing == ["circle/img00.png"]
    assert match.extra == ["square/stray.png"]
    assert match.matched[1] == "circle/img01.jpg"


def test_two_files_for_one_twin_are_refused(tmp_path):
    real = make_tree(tmp_path / "real", per_class=1)
    syn = make_tree(tmp_path / "syn", per_class=1, ext=".jpg")
    Image.new("RGB", (4, 4)).save(syn / "circle" / "img00.png")
    with pytest.raises(DatasetError, match=r"img00\.jpg and circle/img00\.png"):
        match_twins(ImageTree.scan(real).relpaths, syn)


def test_unlabelled_tree_and_empty_tree(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    tree = ImageTree.scan(tmp_path)
    assert not tree.labelled and tree.labels.tolist() == [-1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found under .*empty"):
        ImageTree.scan(tmp_path / "empty")
    with pytest.raises(DatasetError, match="not found"):
        ImageTree.scan(tmp_path / "absent")


def test_a_tree_with_class_folders_and_loose_images_is_refused_by_every_reader(tmp_path):
    """An image beside the class folders was trained on with label -1, without a word, and
    crashed `eval knn --train` ("index -1 out of bounds"). Every command reads trees through
    ImageTree.scan: each refuses it, naming the tree and the loose image."""
    from mixdiff.config import load_config
    from mixdiff.evaluate.features import ImageSet
    from mixdiff.pretrain.input.datamodule import MixDiffDataModule

    tree = make_tree(tmp_path / "train", per_class=2)
    Image.new("RGB", (4, 4)).save(tree / "loose.png")
    expected = f"{tree} has class folders and also 1 image(s) directly in it"
    for read in (lambda: ImageTree.scan(tree), lambda: ImageSet.from_tree(tree),
                 lambda: MixDiffDataModule(load_config(None, [f"data.real={tree}"])).setup()):
        with pytest.raises(DatasetError, match=re.escape(expected) + ".*loose.png"):
            read()
    result = runner.invoke(app, ["eval", "knn", "--run", str(tmp_path / "run"), "--train",
                                 str(tree), "--val", str(make_tree(tmp_path / "val", 1))])
    assert result.exit_code == 2 and expected in result.output
    assert "Traceback" not in result.output


def test_a_trees_fingerprint_says_what_changed_by_class(tmp_path):
    """Names and sizes only (no pixel read): what a resumed run compares with its start."""
    from mixdiff.data.tree import fingerprint, fingerprint_changes

    tree = make_tree(tmp_path / "t", per_class=2)
    before = fingerprint(tree)
    assert before["images"] == 6 and before["classes"]["circle"]["images"] == 2
    assert fingerprint_changes(before, fingerprint(tree)) is None
    (tree / "dots").mkdir()
    Image.new("RGB", (4, 4)).save(tree / "dots" / "a.png")
    (tree / "circle" / "img00.png").unlink()
    assert fingerprint_changes(before, fingerprint(tree)) == (
        "6 images where there were 6; class(es) added: dots; 1 image(s) removed in circle")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "a.png")
    unlabelled = fingerprint(flat)
    Image.new("RGB", (4, 4)).save(flat / "b.png")
    assert fingerprint_changes(unlabelled, fingerprint(flat)) == (
        "2 images where there were 1; 1 image(s) added in (the root)")


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    Image.new("RGB", (64, 64)).save(bad)
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    with pytest.raises(UnreadableImageError, match="broken.png"):
        load_rgb(bad)


def test_stratified_splits_are_seeded_and_stratified():
    labels = np.repeat(np.arange(4), 50)
    a, b = stratified_subset(labels, 0.1, 0), stratified_subset(labels, 0.1, 0)
    assert np.array_equal(a, b) and np.bincount(labels[a]).tolist() == [5, 5, 5, 5]
    assert not np.array_equal(a, stratified_subset(labels, 0.1, 1))
    assert set(stratified_subset(labels, 0.1, 0)) <= set(stratified_subset(labels, 0.3, 0))
    train, held = stratified_holdout(labels, 0.2, 0)
    assert np.bincount(labels[held]).tolist() == [10] * 4
    assert not set(train) & set(held) and len(train) + len(held) == 200
    train, held = stratified_holdout(np.array([0, 1, 1]), 0.5, 0)  # never a class's last image
    assert 0 in train and len(held) == 1


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                         *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _idx_source(folder: Path, train: int, test: int) -> Path:
    """A Fashion-MNIST source folder of IDX files: `train` and `test` random images."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


def test_fashion_mnist_prepare_from_idx_files(tmp_path):
    src = _idx_source(tmp_path / "src", 30, 10)
    result = runner.invoke(app, ["data", "prepare", "fashion-mnist", "--source", str(src),
                                 "--out", str(tmp_path / "fm")])
    assert result.exit_code == 0, result.output
    tree = ImageTree.scan(tmp_path / "fm" / "train")
    assert len(tree) == 30 and tree.classes == tuple(sorted(fashion_mnist.CLASSES))
    first = tmp_path / "fm" / "train" / "T-shirt_top" / "00000.png"
    expected = fashion_mnist.read_idx(src / "train-images-idx3-ubyte.gz")[0]
    assert np.array_equal(np.array(Image.open(first)), expected)
    assert len(ImageTree.scan(tmp_path / "fm" / "test")) == 10


def _count(folder):
    return sum(1 for path in folder.rglob("*") if path.is_file())


def test_fashion_mnist_prepare_makes_the_tree_exactly_what_was_asked(tmp_path):
    src = _idx_source(tmp_path / "src", 50, 20)  # 5 and 2 images of each class
    out = tmp_path / "fm"
    args = ["data", "prepare", "fashion-mnist", "--source", str(src), "--out", str(out)]
    first = runner.invoke(app, args + ["--per-class", "4"])
    assert first.exit_code == 0, first.output
    assert (_count(out / "train"), _count(out / "test")) == (40, 20)
    mine = out / "train" / "Bag" / "notes.txt"  # files of other names are never touched
    mine.write_text("keep me")
    Image.new("L", (28, 28)).save(out / "train" / "Bag" / "my-own.png")
    smaller = runner.invoke(app, args + ["--per-class", "2"])
    assert smaller.exit_code == 0, smaller.output
    assert _count(out / "test") == 20 and _count(out / "train") == 20 + 2
    assert len(ImageTree.scan(out / "train")) == 21 and mine.read_text() == "keep me"
    assert sorted(p.name for p in (out / "train" / "Bag").iterdir()) == [
        "00008.png", "00018.png", "my-own.png", "notes.txt"]  # the first 2 of class 8
    assert f"{out / 'train'}: 21 images (0 written; 20 removed" in smaller.output
    assert "1 not written by this command" in smaller.output
    assert f"{out / 'test'}: 20 images (0 written)" in smaller.output
    again = runner.invoke(app, args + ["--per-class", "3"])  # growing again writes only the new
    assert f"{out / 'train'}: 31 images (10 written; 1 not written" in again.output
    assert _count(out / "train") == 30 + 2


def test_fashion_mnist_missing_files_names_the_package(tmp_path):
    result = runner.invoke(app, ["data", "prepare", "fashion-mnist", "--source", str(tmp_path),
                                 "--out", str(tmp_path / "fm")])
    assert result.exit_code == 2
    assert "dataset-fashion-mnist" in result.output and "train-images-idx3-ubyte" in result.output


@pytest.mark.skipif(not fashion_mnist.DEBIAN_DIR.is_dir(), reason="Debian's files not installed")
def test_fashion_mnist_from_debian_package(tmp_path):
    prepared = fashion_mnist.prepare(tmp_path, per_class=2)
    assert {split: p.images for split, p in prepared.items()} == {"train": 20, "test": 20}
    assert ImageTree.scan(tmp_path / "train").classes == tuple(sorted(fashion_mnist.CLASSES))


def test_verify_json_and_strict(tmp_path):
    real = make_tree(tmp_path / "real", per_class=2)
    syn = make_tree(tmp_path / "syn", per_class=2, ext=".jpg")
    (syn / "circle" / "img01.jpg").unlink()
    (syn / "square" / "img00.jpg").write_bytes(b"not an image")
    Image.new("RGB", (4, 4)).save(syn / "stripes" / "extra.png")
    args = ["data", "verify", "--real", str(real), "--synthetic", str(syn), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["real"] == {"root": str(real), "images": 6, "classes": 3, "unreadable": []}
    entry = report["synthetic"][0]
    assert entry["root"] == str(syn) and entry["matched"] == 5
    assert entry["missing"] == ["circle/img01.png"] and entry["extra"] == ["stripes/extra.png"]
    assert [u["path"] for u in entry["unreadable"]] == [str(syn / "square" / "img00.jpg")]
    strict = runner.invoke(app, args + ["--strict"])
    assert strict.exit_code == 1
    clean = runner.invoke(app, ["data", "verify", "--real", str(real), "--strict"])
    assert clean.exit_code == 0 and "6 images, 3 classes" in clean.output


def test_verify_names_extra_files_and_says_what_no_decode_checked(tmp_path):
    real = make_tree(tmp_path / "real", per_class=2)
    syn = make_tree(tmp_path / "syn", per_class=2)
    (syn / "square" / "img00.png").write_bytes(b"not an image")  # no image header
    truncated = syn / "circle" / "img01.png"
    truncated.write_bytes(truncated.read_bytes()[:60])  # header intact, pixels cut off
    for i in range(12):
        Image.new("RGB", (4, 4)).save(syn / "stripes" / f"extra{i:02d}.png")
    args = ["data", "verify", "--real", str(real), "--synthetic", str(syn)]
    full = runner.invoke(app, args)
    assert "extra stripes/extra00.png" in full.output and "extra stripes/extra09.png" in full.output
    assert "extra stripes/extra10.png" not in full.output and "and 2 more" in full.output
    assert "2 unreadable" in full.output and "header check" not in full.output
    header = runner.invoke(app, args + ["--no-decode"])
    assert "header check only" in header.output
    assert "1 unreadable (header check only" in header.output  # the truncated file passes
    assert str(syn / "square" / "img00.png") in header.output
    report = json.loads(runner.invoke(app, args + ["--no-decode", "--json"]).stdout)
    assert report["check"] == "header"
    assert [u["path"] for u in report["synthetic"][0]["unreadable"]] == [
        str(syn / "square" / "img00.png")]
    assert set(report["synthetic"][0]) == {"root", "matched", "missing", "extra", "unreadable"}
    decoded = json.loads(runner.invoke(app, args + ["--json"]).stdout)
    assert decoded["check"] == "decode" and len(decoded["synthetic"][0]["unreadable"]) == 2


def test_imagenet100_prepare_links_the_cmc_classes(tmp_path):
    from mixdiff.data import imagenet100

    wnids = imagenet100.class_list()
    assert len(wnids) == 100 and len(set(wnids)) == 100 and wnids[0] == "n02869837"
    for split in ("train", "val"):
        for wnid in wnids + ["n99999999"]:
            (tmp_path / "in1k" / split / wnid).mkdir(parents=True)
    result = runner.invoke(app, ["data", "prepare", "imagenet100", "--source",
                                 str(tmp_path / "in1k"), "--out", str(tmp_path / "in100")])
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 'in100' / 'val'}: 100 class folders linked" in result.output
    assert sorted(p.name for p in (tmp_path / "in100" / "train").iterdir()) == sorted(wnids)
    refused = runner.invoke(app, ["data", "prepare", "imagenet100", "--source",
                                  str(tmp_path / "in1k"), "--out", str(tmp_path / "y"),
                                  "--per-class", "5"])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "--test-per-class apply to fashion-mnist only" in said
    with pytest.raises(DatasetError, match="missing"):
        imagenet100.prepare(tmp_path / "x", tmp_path / "in100" / "train")


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    """PIL's convert("RGB") clips 16-bit grey at 255 (almost every pixel white); every reader of
    training, evaluation and generation images goes through decode.to_rgb instead."""
    from mixdiff.data.decode import ViewNeed, load_rgb_for

    values = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # it really is a 16-bit file
    for image in (load_rgb(path), load_rgb_for(path, [ViewNeed(16, 0.5)])):
        pixels = np.asarray(image)
        assert image.mode == "RGB" and pixels.shape == (32, 32, 3)
        assert np.array_equal(pixels[..., 0], (values >> 8).astype(np.uint8))
        assert (pixels == 255).mean() < 0.01


def test_a_folder_that_cannot_be_read_is_an_error_not_a_missing_class(tmp_path, monkeypatch):
    """os.walk skips what it cannot list: a class would vanish from training without a word.
    (Run as root, a chmod cannot make a folder unreadable, so the listing's error is injected.)"""
    import os

    real = make_tree(tmp_path / "real", 2)
    locked = real / "circle"
    listing = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DatasetError, match=r"cannot read the folder .*circle: Permission denied"):
        ImageTree.scan(real)
    result = CliRunner().invoke(app, ["data", "verify", "--real", str(real), "--strict"])
    assert result.exit_code != 0 and "cannot read the folder" in " ".join(result.output.split())


def test_verify_given_a_file_says_it_is_a_file(tmp_path):
    image = make_tree(tmp_path / "real", 1) / "circle" / "img00.png"
    result = CliRunner().invoke(app, ["data", "verify", "--real", str(image)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"{image} is a file" in said and "not found" not in said


def test_a_link_back_into_the_tree_is_refused_not_counted_again(tmp_path):
    """S3: a class folder holding a link to its parent (a loop) made the class count 3x, and a
    link to another class counted that class's images twice; a link to a folder outside the
    tree is followed as before."""
    real = make_tree(tmp_path / "real", 2)
    elsewhere = make_tree(tmp_path / "elsewhere", 1, classes=("star",))
    (real / "star").symlink_to(elsewhere / "star", target_is_directory=True)
    assert len(ImageTree.scan(real)) == 3 * 2 + 1
    loop = real / "circle" / "again"
    loop.symlink_to(real / "circle", target_is_directory=True)
    with pytest.raises(DatasetError, match=f"{loop} and {real / 'circle'} are the same folder"):
        ImageTree.scan(real)
    loop.unlink()
    (real / "circle" / "other").symlink_to(real / "star", target_is_directory=True)
    result = CliRunner().invoke(app, ["data", "verify", "--real", str(real)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "are the same folder" in said and "Traceback" not in said


def test_a_float_tiff_is_scaled_not_black_and_other_floats_are_refused(tmp_path):
    """IMG-F: a 32-bit float TIFF of values 0..1 decoded as all black (PIL clips them)."""
    values = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(values).save(tmp_path / "unit.tif")
    pixels = np.asarray(load_rgb(tmp_path / "unit.tif"))
    assert np.array_equal(pixels[..., 0], np.round(values * 255).astype(np.uint8))
    Image.fromarray(values * 255).save(tmp_path / "bytes.tif")
    with pytest.raises(UnreadableImageError, match=re.escape(
            f"cannot read image {tmp_path / 'bytes.tif'}: a floating-point image with values "
            "from 0 to 255")):
        load_rgb(tmp_path / "bytes.tif")


def test_prepare_rewrites_what_an_earlier_prepare_left_wrong(tmp_path):
    """PREP/Q11: a re-run kept any file under its name: one cut short by a killed copy, or
    another image, stayed in the tree (and a link to elsewhere, or a dangling one, in
    ImageNet-100's: the latter was a FileExistsError traceback)."""
    from mixdiff.data import imagenet100

    src = _idx_source(tmp_path / "src", 20, 10)
    out = tmp_path / "fm"
    args = ["data", "prepare", "fashion-mnist", "--source", str(src), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    cut, other = out / "train" / "Bag" / "00008.png", out / "train" / "Bag" / "00018.png"
    cut.write_bytes(cut.read_bytes()[:40])
    other.write_bytes((out / "train" / "Coat" / "00004.png").read_bytes())
    again = runner.invoke(app, args)
    assert f"{out / 'train'}: 20 images (0 written; 2 rewritten" in again.output, again.output
    expected = fashion_mnist.read_idx(src / "train-images-idx3-ubyte.gz")
    for path, i in ((cut, 8), (other, 18)):
        assert np.array_equal(np.asarray(Image.open(path)), expected[i])
    assert f"{out / 'test'}: 10 images (0 written)" in again.output

    wnids = imagenet100.class_list()
    for root in ("in1k", "moved"):
        for split in ("train", "val"):
            for wnid in wnids:
                (tmp_path / root / split / wnid).mkdir(parents=True)
    imagenet100.prepare(tmp_path / "in100", tmp_path / "in1k")
    (tmp_path / "in100" / "train" / wnids[0]).unlink()
    (tmp_path / "in100" / "train" / wnids[0]).symlink_to(tmp_path / "moved" / "train" / wnids[0])
    (tmp_path / "in100" / "train" / wnids[1]).unlink()
    (tmp_path / "in100" / "train" / wnids[1]).symlink_to(tmp_path / "gone")
    imagenet100.prepare(tmp_path / "in100", tmp_path / "in1k")
    for wnid in wnids[:2]:
        assert (tmp_path / "in100" / "train" / wnid).resolve() == tmp_path / "in1k" / "train" / wnid
    assert sorted(p.name for p in (tmp_path / "in100" / "train").iterdir()) == sorted(wnids)
    (tmp_path / "in100" / "val" / wnids[2]).unlink()
    (tmp_path / "in100" / "val" / wnids[2]).mkdir()  # a folder of someone's: never replaced
    with pytest.raises(DatasetError, match=f"{tmp_path / 'in100' / 'val' / wnids[2]} is not "
                                           "the link to .* that prepare makes"):
        imagenet100.prepare(tmp_path / "in100", tmp_path / "in1k")
