"""`mixdiff generate` with tiny pipelines built from configs: every generator, determinism,
sharding, resume after a kill, corrupt inputs, bad model ids, manifest content."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import tiny_pipelines
from conftest import make_tree
from mixdiff.cli import app
from mixdiff.data.tree import ImageTree, match_twins
from mixdiff.errors import ConfigError
from mixdiff.generate.backends import (CLIP_MEAN, CLIP_STD, GeneratorLoadError,
                                       sd_variation_preprocess)
from mixdiff.generate.embedded import EMBEDDED_DIR, GeneratorTraining, train_generator
from mixdiff.generate.runner import generate
from mixdiff.generate.settings import GenerateSettings, image_seed, parse_shard

runner = CliRunner()
MANIFEST_FIELDS = {"source", "variant", "seed", "path", "status", "sha256", "bytes", "generator",
                   "model", "revision", "scheduler", "steps", "guidance", "resolution", "dtype",
                   "preprocessing"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {name: build(base / name) for name, build in tiny_pipelines.BUILDERS.items()}


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("gen") / "real", per_class=2)


def settings(models, generator="sd-image-variations", **extra) -> GenerateSettings:
    base = {"generator": generator, "model": str(models[generator]), "steps": 2,
            "resolution": None if generator == "sdedit" else 16, "batch_size": 3}
    return GenerateSettings(**{**base, **extra})


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_sd_variation_preprocessing_matches_the_model_card():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    got = sd_variation_preprocess([image])
    assert got.shape == (1, 3, 224, 224)
    # the model card: ToTensor, Resize((224, 224), bicubic, antialias=False), Normalize(CLIP)
    tensor = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float()[None] / 255
    resized = F.interpolate(tensor, size=(224, 224), mode="bicubic", antialias=False,
                            align_corners=False)
    expected = (resized - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    assert torch.allclose(got, expected, atol=1e-5)
    antialiased = F.interpolate(tensor, size=(224, 224), mode="bicubic", antialias=True)
    assert not torch.allclose(resized, antialiased, atol=1e-2)  # the choice matters


def test_seeds_come_from_path_and_variant_not_order():
    assert image_seed(0, "cls/a", 0) == image_seed(0, "cls/a", 0)
    assert len({image_seed(0, "cls/a", 0), image_seed(0, "cls/a", 1), image_seed(1, "cls/a", 0),
                image_seed(0, "cls/b", 0)}) == 4
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1-4"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


@pytest.mark.parametrize("generator", list(tiny_pipelines.BUILDERS))
def test_every_generator_writes_a_mirrored_tree_and_manifest(models, real, tmp_path, generator):
    out = tmp_path / "out"
    summary = generate(real, out, settings(models, generator, variants=2), show_progress=False)
    assert (summary.written, summary.failed) == (12, [])
    tree = ImageTree.scan(real)
    for k in (0, 1):
        match = match_twins(tree.relpaths, out / f"v{k}")
        assert match.missing == [] and match.extra == []
    manifest = rows(out)
    assert len(manifest) == 12 and all(MANIFEST_FIELDS <= set(r) for r in manifest)
    row = manifest[0]
    assert row["generator"] == generator and row["status"] == "ok" and row["steps"] == 2
    assert row["seed"] == image_seed(0, row["source"].rsplit(".", 1)[0], row["variant"])
    import hashlib
    assert hashlib.sha256((out / row["path"]).read_bytes()).hexdigest() == row["sha256"]
    saved = (out / "generate.yaml").read_text()
    assert f"generator: {generator}" in saved and "steps: 2" in saved
    verify = runner.invoke(app, ["data", "verify", "--real", str(real), "--synthetic",
                                 str(out / "v0"), "--json", "--strict"])
    assert verify.exit_code == 0 and json.loads(verify.stdout)["synthetic"][0]["matched"] == 6


def test_outputs_do_not_depend_on_batch_size_or_reruns(models, real, tmp_path):
    generate(real, tmp_path / "a", settings(models, batch_size=1), show_progress=False)
    generate(real, tmp_path / "b", settings(models, batch_size=4), show_progress=False)
    generate(real, tmp_path / "c", settings(models, batch_size=1), show_progress=False)
    for row in rows(tmp_path / "a"):
        a, b = pixels(tmp_path / "a" / row["path"]), pixels(tmp_path / "b" / row["path"])
        assert np.abs(a - b).max() <= 2  # batched kernels' floating-point noise at most
        assert (tmp_path / "a" / row["path"]).read_bytes() == \
            (tmp_path / "c" / row["path"]).read_bytes()  # a plain re-run: byte for byte


def test_two_shards_equal_one_run(models, real, tmp_path):
    whole = tmp_path / "whole"
    generate(real, whole, settings(models, variants=2), show_progress=False)
    sharded = tmp_path / "sharded"
    parts = [generate(real, sharded, settings(models, variants=2), shard=(i, 2),
                      show_progress=False) for i in (0, 1)]
    assert [p.written for p in parts] == [6, 6]
    merged = rows(sharded)
    assert len(merged) == 12 and len({(r["source"], r["variant"]) for r in merged}) == 12
    assert [r["path"] for r in merged] == [r["path"] for r in rows(whole)]
    for row in merged:  # other batch companions: equal up to batched kernels' noise
        assert np.abs(pixels(sharded / row["path"]) - pixels(whole / row["path"])).max() <= 2


def test_shard_from_torchrun_environment(models, real, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    summary = generate(real, tmp_path / "out", settings(models), show_progress=False)
    assert summary.planned == 2  # outputs 1 and 4 of 6
    assert (tmp_path / "out" / "manifests" / "shard-1-of-3.jsonl").is_file()


def test_resume_after_a_killed_run(models, real, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "mixdiff.cli", "generate", "--real", str(real), "--out",
            str(out), "--generator", "sdedit", "--model", str(models["sdedit"]), "--steps", "30",
            "--batch-size", "1", "--variants", "4"]
    shard_file = out / "manifests" / "shard-0-of-1.jsonl"
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if shard_file.exists() and len(shard_file.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written_before = len(shard_file.read_text().splitlines())
    assert 2 <= written_before < 24, "the run should have been killed part-way"
    summary = generate(real, out, GenerateSettings(generator="sdedit", model=str(models["sdedit"]),
                                                   steps=30, batch_size=1, variants=4),
                       show_progress=False)
    assert summary.skipped >= 2 and summary.written + summary.skipped == 24
    assert len(rows(out)) == 24
    for image in out.rglob("*.png"):  # a killed write never leaves a truncated image in place
        Image.open(image).load()


def test_changed_settings_are_refused_unless_overwrite(models, real, tmp_path):
    out = tmp_path / "out"
    generate(real, out, settings(models), show_progress=False)
    with pytest.raises(ConfigError, match=r"steps: 2 -> 3"):
        generate(real, out, settings(models, steps=3), show_progress=False)
    again = generate(real, out, settings(models), show_progress=False)
    assert (again.written, again.skipped) == (0, 6)
    more = generate(real, out, settings(models, variants=2), show_progress=False)
    assert (more.written, more.skipped) == (6, 6)  # more variants only add outputs
    fresh = generate(real, out, settings(models, steps=3), overwrite=True, show_progress=False)
    assert fresh.written == 6 and all(r["steps"] == 3 for r in rows(out))


def test_corrupt_input_is_recorded_and_the_run_goes_on(models, tmp_path):
    real = make_tree(tmp_path / "real", per_class=2)
    (real / "square" / "img01.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = runner.invoke(app, ["generate", "--real", str(real), "--out", str(tmp_path / "out"),
                                 "--generator", "sdedit", "--model", str(models["sdedit"]),
                                 "--steps", "2"])
    assert result.exit_code == 1
    assert "5 written" in result.output and "1 failed" in result.output
    assert "square/img01.png" in result.output
    failed = [r for r in rows(tmp_path / "out") if r["status"] == "failed"]
    assert len(failed) == 1 and "img01.png" in failed[0]["error"]


def test_bad_model_ids_fail_at_once_naming_them(real, tmp_path):
    with pytest.raises(GeneratorLoadError, match=r"(?s)'no-such-org/no-such-model'.*--model DIR"):
        generate(real, tmp_path / "a", GenerateSettings(model="no-such-org/no-such-model",
                                                        device="cpu"), show_progress=False)
    with pytest.raises(GeneratorLoadError, match=r"lambdalabs/sd-image-variations-diffusers.*v2\.0"):
        generate(real, tmp_path / "b", GenerateSettings(device="cpu"), show_progress=False)
    result = runner.invoke(app, ["generate", "--real", str(real), "--out", str(tmp_path / "c"),
                                 "--generator", "sdedit", "--model", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "nothing" in result.output
    assert not list((tmp_path / "a").glob("v*"))  # nothing written


def test_embedded_generator_works_offline_out_of_the_box(tmp_path):
    assert (EMBEDDED_DIR / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    record = json.loads((EMBEDDED_DIR / "training.json").read_text())
    assert record["settings"]["steps"] > 0 and record["final_loss_mean_last_200"] < 0.1
    real = make_tree(tmp_path / "real", per_class=1)
    result = runner.invoke(app, ["generate", "--real", str(real), "--out", str(tmp_path / "out"),
                                 "--generator", "sdedit", "--steps", "4"])
    assert result.exit_code == 0, result.output
    row = rows(tmp_path / "out")[0]
    assert row["model"] == "embedded:fashion-mnist-ddpm"
    assert Image.open(tmp_path / "out" / row["path"]).size == (32, 32)


def test_train_generator_writes_a_loadable_pipeline(real, tmp_path):
    from diffusers import DDPMPipeline

    cfg = GeneratorTraining(resolution=16, block_out_channels=(8, 16), steps=3, batch_size=4,
                            warmup_steps=1, num_workers=0)
    record = train_generator(real, tmp_path / "ddpm", cfg, show_progress=False)
    assert record["settings"]["steps"] == 3 and record["images"] == 6
    pipe = DDPMPipeline.from_pretrained(tmp_path / "ddpm")
    assert pipe.unet.config.sample_size == 16 and pipe.unet.config.in_channels == 1


def test_pretrain_takes_generated_roots_directly(models, real, tmp_path):
    from conftest import tiny_overrides
    from mixdiff.config import load_config
    from mixdiff.train import pretrain

    out = tmp_path / "syn"
    generate(real, out, settings(models, "sdedit", variants=2), show_progress=False)
    data = {"real": real, "syn0": out / "v0", "syn1": out / "v1"}
    run = pretrain(load_config(None, tiny_overrides(data, **{"data.mode": "mixdiff",
                                                            "trainer.batch_size": 2})),
                   tmp_path / "run")
    assert "train/synthetic_fraction" in (run / "metrics.csv").read_text()
