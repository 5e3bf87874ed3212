"""`mixdiff generate` with tiny pipelines built from configs: every generator, determinism,
sharding, resume after a kill, corrupt inputs, bad model ids, manifest content."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from typer.testing import CliRunner

import tiny_pipelines
from conftest import make_tree
from mixdiff.cli import app
from mixdiff.data.tree import ImageTree, match_twins
from mixdiff.errors import ConfigError, UnreadableImageError
from mixdiff.generate.backends import (CLIP_MEAN, CLIP_STD, GeneratorLoadError,
                                       sd_variation_preprocess)
from mixdiff.generate.embedded import EMBEDDED_DIR, GeneratorTraining, train_generator
from mixdiff.generate.runner import SettingsChangedError, generate, refuse_overlap
from mixdiff.generate.settings import (USED_BY, GenerateSettings, changed_settings, image_seed,
                                       parse_shard)

runner = CliRunner()
MANIFEST_FIELDS = {"source", "variant", "seed", "path", "status", "sha256", "bytes", "generator",
                   "model", "model_sha256", "revision", "scheduler", "steps", "resolution",
                   "dtype", "preprocessing"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {name: build(base / name) for name, build in tiny_pipelines.BUILDERS.items()}


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("gen") / "real", per_class=2)


# These tests hold for fp32 on the CPU (byte-identical re-runs, batch-size independence): on a GPU
# machine `--device auto` would pick the GPU, fp16 and torch.compile, so every run here names the
# CPU (test_generation_tests_run_fp32_on_the_cpu_on_a_gpu_machine). The GPU's own generation test
# is in tests/generate/test_generate_gpu.py.
def settings(models, generator="sd-image-variations", **extra) -> GenerateSettings:
    base = {"generator": generator, "model": str(models[generator]), "steps": 2,
            "resolution": None if generator == "sdedit" else 16, "batch_size": 3, "device": "cpu"}
    return GenerateSettings(**{**base, **extra})


def generate_args(real: Path, out: Path, *options: str) -> list[str]:
    """`mixdiff generate` on the CPU (Typer keeps the last of a repeated option: `--device` in
    `options` wins)."""
    return ["generate", "--real", str(real), "--out", str(out), "--device", "cpu", *options]


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
    used = {name for name, users in USED_BY.items() if generator in users}
    assert set(row) - MANIFEST_FIELDS - {"save_size"} == used  # nothing it ignores
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


def test_a_strength_mixture_draws_per_image_deterministically(models, real, tmp_path):
    """`--strength 0.2,0.5,0.9`: each image draws its strength from its own seed, its manifest row
    says which, and the bytes do not depend on the batch or on a re-run."""
    mixture = (0.2, 0.5, 0.9)
    for name, batch in (("a", 1), ("b", 4), ("c", 1)):
        generate(real, tmp_path / name, settings(models, "sdedit", strength=mixture,
                                                   variants=2, batch_size=batch),
                 show_progress=False)
    drawn = {(row["source"], row["variant"]): row["strength"] for row in rows(tmp_path / "a")}
    assert set(drawn.values()) <= set(mixture) and len(set(drawn.values())) > 1  # 12 images
    assert drawn == {(row["source"], row["variant"]): row["strength"]
                     for row in rows(tmp_path / "b")}
    for row in rows(tmp_path / "a"):
        a, b = pixels(tmp_path / "a" / row["path"]), pixels(tmp_path / "b" / row["path"])
        assert np.abs(a - b).max() <= 2  # batched kernels' floating-point noise at most
        assert (tmp_path / "a" / row["path"]).read_bytes() == \
            (tmp_path / "c" / row["path"]).read_bytes()
    # each image is what a run at its drawn strength alone makes
    row = next(r for r in rows(tmp_path / "a") if r["strength"] == 0.9)
    alone = tmp_path / "alone"
    generate(real, alone, settings(models, "sdedit", strength=0.9, variants=2, batch_size=1),
             show_progress=False)
    assert (alone / row["path"]).read_bytes() == (tmp_path / "a" / row["path"]).read_bytes()
    # a changed list is a changed setting; a mixture of one value is that value
    with pytest.raises(SettingsChangedError, match="strength"):
        generate(real, tmp_path / "a", settings(models, "sdedit", strength=(0.2, 0.5),
                                                  variants=2), show_progress=False)
    assert GenerateSettings(generator="sdedit", strength=(0.3, 0.3)).resolved().strength == 0.3
    with pytest.raises(ConfigError,
                       match=re.escape("--strength must lie in (0, 1], not (0.2, 1.5)")):
        GenerateSettings(generator="sdedit", strength=(0.2, 1.5)).resolved()
    said = runner.invoke(app, ["generate", "--real", str(real), "--out", str(tmp_path / "x"),
                               "--generator", "sdedit", "--strength", "0.2,high"])
    assert said.exit_code == 2 and "--strength '0.2,high'" in said.output


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


def test_each_torchrun_rank_takes_its_own_gpu(monkeypatch):
    """Under torchrun each rank is a shard (above) on its machine's GPU LOCAL_RANK, with
    --device auto and cuda alike (not every rank on cuda:0); more ranks than GPUs on a machine is
    one line. Emulated: CUDA says this machine has 2 GPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    def device(given: str) -> str:
        return GenerateSettings(generator="sdedit", device=given).resolved().device

    assert (device("auto"), device("cuda"), device("cuda:1")) == ("cuda:0", "cuda", "cuda:1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert [device(d) for d in ("auto", "cuda", "cuda:0", "cpu")] == \
        ["cuda:1", "cuda:1", "cuda:0", "cpu"]  # an index given is kept
    monkeypatch.setenv("LOCAL_RANK", "2")
    for given in ("auto", "cuda"):
        with pytest.raises(ConfigError, match=r"^--device cuda:2: this machine has 2 CUDA GPU\(s\)"
                           r", cuda:0 to cuda:1 \(this rank's GPU, LOCAL_RANK=2: start at most 2 "
                           r"process\(es\) per machine\)$"):
            device(given)


def _generating(models, real, out):
    """A real `mixdiff generate` process (24 outputs, one per batch), once it has written two;
    returns it and its shard file. It starts with SIGINT's default action: a test run started in
    the background by a shell without job control inherits SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler (the Ctrl-C test would see the run finish)."""
    args = [sys.executable, "-m", "mixdiff.cli", *generate_args(
        real, out, "--generator", "sdedit", "--model", str(models["sdedit"]), "--steps", "30",
        "--batch-size", "1", "--variants", "4")]
    shard_file = out / "manifests" / "shard-0-of-1.jsonl"
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if shard_file.exists() and len(shard_file.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "generate finished before the test could stop it"
    return process, shard_file


@pytest.mark.slow
def test_resume_after_a_killed_run(models, real, tmp_path):
    out = tmp_path / "out"
    process, shard_file = _generating(models, real, out)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    written_before = len(shard_file.read_text().splitlines())
    assert 2 <= written_before < 24, "the run should have been killed part-way"
    summary = generate(real, out, GenerateSettings(generator="sdedit", model=str(models["sdedit"]),
                                                   steps=30, batch_size=1, variants=4,
                                                   device="cpu"),
                       show_progress=False)
    assert summary.skipped >= 2 and summary.written + summary.skipped == 24
    assert len(rows(out)) == 24
    for image in out.rglob("*.png"):  # a killed write never leaves a truncated image in place
        Image.open(image).load()


@pytest.mark.slow
def test_ctrl_c_keeps_what_was_written_in_the_merged_manifest(models, real, tmp_path):
    out = tmp_path / "out"
    process, shard_file = _generating(models, real, out)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    said = " ".join(output.split())
    assert process.returncode == 128 + signal.SIGINT, output
    assert "written" in said and "stopped by Ctrl-C" in said and "Traceback" not in said
    written = rows(out)  # the merged manifest lists what the shard file holds
    assert 2 <= len(written) < 24
    assert len(written) == len(shard_file.read_text().splitlines())
    assert all((out / row["path"]).is_file() for row in written)


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


def test_twins_are_never_written_into_the_real_tree(tmp_path):
    """--out inside --real made the twins (OUT/v0/...) an 11th class of the real tree; --real
    inside OUT/v<k> would have its images replaced by their twins. Both are refused, nothing
    written."""
    real = make_tree(tmp_path / "real", per_class=1)
    sdedit = GenerateSettings(generator="sdedit", device="cpu")
    for out in (real / "twins", real):
        with pytest.raises(ConfigError, match=re.escape(f"--out {out} lies inside --real {real}")):
            generate(real, out, sdedit, show_progress=False)
    assert sorted(p.name for p in real.iterdir()) == ["circle", "square", "stripes"]
    inner = make_tree(tmp_path / "out" / "v0", per_class=1)
    with pytest.raises(ConfigError, match=re.escape(f"--real {inner} lies inside --out")):
        generate(inner, tmp_path / "out", sdedit, show_progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v0"]
    beside = make_tree(tmp_path / "data" / "train", per_class=1)  # OUT above, not in v<k>: fine
    refuse_overlap(beside, tmp_path / "data")


def test_corrupt_input_is_recorded_and_the_run_goes_on(models, tmp_path):
    real = make_tree(tmp_path / "real", per_class=2)
    (real / "square" / "img01.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = runner.invoke(app, generate_args(real, tmp_path / "out", "--generator", "sdedit",
                                              "--model", str(models["sdedit"]), "--steps", "2"))
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
    assert not (tmp_path / "a").exists()  # nothing written


def test_a_missing_local_folder_is_not_called_a_hub_id(real, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model in ("/nonexistent/folder", "./pipes/ddpm", "../ddpm", "~/no-such-pipeline",
                  "a/b/c"):
        result = runner.invoke(app, ["generate", "--real", str(real), "--out", "S",
                                     "--generator", "sdedit", "--model", model])
        assert result.exit_code == 2, result.output
        assert "local folder not found" in result.output and model.lstrip("./~") in result.output
        assert "Hugging Face" not in result.output and "download" not in result.output
    hub = runner.invoke(app, ["generate", "--real", str(real), "--out", "S", "--generator",
                              "sdedit", "--model", "no-such-org/no-such-model", "--revision",
                              "v1"])
    assert hub.exit_code == 2 and "Hugging Face model id 'no-such-org/no-such-model'" in hub.output
    # the command the hub client really ships (huggingface_hub's `hf`, not `huggingface-cli`)
    assert "`hf download no-such-org/no-such-model --revision v1 --local-dir DIR`" in hub.output
    assert (Path(sys.executable).parent / "hf").is_file()


def test_a_failed_start_leaves_out_fresh(models, real, tmp_path):
    out = tmp_path / "S"
    good = generate_args(real, out, "--generator", "sdedit", "--model", str(models["sdedit"]),
                         "--steps", "2")
    for failing in (["--model", "/nonexistent"], ["--real", str(tmp_path / "no-real")],
                    ["--device", "no-such-device"], ["--model", str(real)]):  # not a pipeline
        result = runner.invoke(app, good + failing)  # Typer keeps the last of a repeated option
        assert result.exit_code == 2, result.output
        assert not (out / "generate.yaml").exists() and not (out / "manifests").exists()
    fixed = runner.invoke(app, good)
    assert fixed.exit_code == 0, fixed.output
    assert "6 written" in fixed.output
    # a failed --overwrite start destroys nothing either
    again = runner.invoke(app, good + ["--steps", "3", "--overwrite", "--model", "/nonexistent"])
    assert again.exit_code == 2 and len(rows(out)) == 6 and all(r["steps"] == 2 for r in rows(out))


def test_a_gpu_device_on_a_machine_without_one_is_one_line(real, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    base = ["generate", "--real", str(real), "--out", str(tmp_path / "S"), "--generator",
            "sdedit"]
    for device, expected in (("cuda", "--device cuda: no CUDA GPU"),
                             ("cuda:1", "--device cuda:1: no CUDA GPU"),
                             ("gpu0", "--device 'gpu0' is not one of: auto, cpu, cuda"),
                             ("meta", "--device 'meta' is not one of: auto, cpu, cuda")):
        result = runner.invoke(app, base + ["--device", device])
        assert result.exit_code == 2, result.output
        assert expected in result.output and len(result.output.strip().splitlines()) == 1
    assert GenerateSettings(generator="sdedit").resolved().device == "cpu"  # auto
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"--device cuda:2: this machine has 2 CUDA GPU"):
        GenerateSettings(generator="sdedit", device="cuda:2").resolved()


def test_generation_tests_run_fp32_on_the_cpu_on_a_gpu_machine(models, real, tmp_path,
                                                               monkeypatch):
    """What these tests assert (byte-identical re-runs, batch-size independence) holds for fp32
    on the CPU; on a GPU machine `--device auto` picks the GPU, fp16 and torch.compile. Emulated:
    CUDA says this machine has a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    auto = GenerateSettings(generator="sdedit").resolved()
    assert (auto.device, auto.dtype, auto.compile) == ("cuda:0", "fp16", True)  # a GPU machine
    for generator in tiny_pipelines.BUILDERS:
        ours = settings(models, generator).resolved()
        assert (ours.device, ours.dtype, ours.compile) == ("cpu", "fp32", False)
    out = tmp_path / "out"
    result = runner.invoke(app, generate_args(real, out, "--generator", "sdedit", "--model",
                                              str(models["sdedit"]), "--steps", "2"))
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "generate.yaml").read_text())
    assert (saved["device"], saved["dtype"], saved["compile"]) == ("cpu", "fp32", False)


def test_zero_and_ill_fitting_values_are_refused(models):
    for extra, option in (({"steps": 0}, "--steps"), ({"resolution": 0}, "--resolution"),
                          ({"resolution": -8}, "--resolution"), ({"batch_size": 0}, "--batch-size"),
                          ({"variants": 0}, "--variants")):
        for generator in ("sd-image-variations", "sdedit"):
            with pytest.raises(ConfigError, match=f"{option} must be at least 1"):
                GenerateSettings(generator=generator, **extra).resolved()
    for generator in ("sd-image-variations", "versatile-diffusion", "unclip"):
        with pytest.raises(ConfigError, match=r"--resolution 33: .*multiple of 8 \(e\.g\. 32\)"):
            GenerateSettings(generator=generator, resolution=33).resolved()
        assert GenerateSettings(generator=generator, resolution=40).resolved().resolution == 40
    assert GenerateSettings(generator="sdedit", resolution=33).resolved().resolution == 33
    with pytest.raises(ConfigError, match="--limit must be at least 1"):
        generate(".", "out", settings(models), limit=0)


def test_a_custom_vae_factor_is_checked_after_loading(tmp_path):
    from mixdiff.generate.backends import build_backend

    # a VAE that downsamples 16x: a side of 24 passes the settings' check of 8, not the model's
    folder = tiny_pipelines.sd_image_variations(tmp_path / "vae16", vae_blocks=5)
    with pytest.raises(ConfigError, match=r"--resolution 24: the VAE of .*vae16 downsamples 16x"):
        build_backend(GenerateSettings(model=str(folder), resolution=24, steps=1).resolved())


def test_sdedit_records_the_resize_of_its_output(models, real, tmp_path):
    resized = generate(real, tmp_path / "a", settings(models, "sdedit", resolution=20),
                       show_progress=False)
    assert resized.written == 6
    for row in rows(tmp_path / "a"):
        assert Image.open(tmp_path / "a" / row["path"]).size == (20, 20)
        assert row["resolution"] == 20
        assert row["preprocessing"].endswith("; output resized 16 -> 20 px, bicubic")
    generate(real, tmp_path / "b", settings(models, "sdedit"), show_progress=False)
    for row in rows(tmp_path / "b"):  # the UNet's own side: nothing resized, nothing claimed
        assert Image.open(tmp_path / "b" / row["path"]).size == (16, 16)
        assert row["resolution"] == 16 and "resized 16" not in row["preprocessing"]


def test_versatile_diffusion_follows_the_authors(models, real, tmp_path, monkeypatch):
    from torchvision import transforms as v1

    from mixdiff.generate import backends

    assert GenerateSettings(generator="versatile-diffusion").resolved().guidance == 3.0
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 200, 3), np.uint8))
    squashed = backends.squash([wide])[0]
    assert squashed.size == (512, 512)
    # the authors' transform: ToTensor, Resize((512, 512), bicubic, antialias=False), x255 to 8 bits
    theirs = v1.Compose([v1.ToTensor(), v1.Resize((512, 512), v1.InterpolationMode.BICUBIC,
                                                  antialias=False)])(wide)
    expected = (theirs.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(squashed), expected)
    # the whole image is kept (no centre crop): the left and right edges survive
    assert np.abs(np.asarray(squashed)[:, 0].astype(int) - np.asarray(wide.resize(
        (512, 512), Image.BICUBIC))[:, 0].astype(int)).mean() < 8
    fed = []
    real_squash = backends.squash
    monkeypatch.setattr(backends, "squash", lambda images: fed.extend(
        real_squash(images)) or fed[-len(images):])
    generate(real, tmp_path / "vd", settings(models, "versatile-diffusion"), show_progress=False)
    assert len(fed) == 6 and {im.size for im in fed} == {(512, 512)}
    row = rows(tmp_path / "vd")[0]
    assert row["guidance"] == 3.0
    assert "Resize((512, 512), bicubic, antialias=False) (squashed, not cropped)" in \
        row["preprocessing"]


def test_sharded_overwrite_keeps_every_rank_s_new_rows(models, tmp_path):
    real = make_tree(tmp_path / "real", per_class=2)
    out = tmp_path / "S"
    old = settings(models, "sdedit", steps=2)
    for i in range(3):  # an earlier run, split in 3 ...
        generate(real, out, old, shard=(i, 3), show_progress=False)
    for i in range(2):  # ... then given a second variant, split in 2
        generate(real, out, replace(old, variants=2), shard=(i, 2), show_progress=False)
    assert len(rows(out)) == 12
    (real / "square" / "img01.png").write_bytes(b"not a png")  # its old row says ok
    new = replace(old, steps=3, variants=2)
    # rank 1 finishes before rank 0 starts, both with --overwrite
    first = generate(real, out, new, shard=(1, 2), overwrite=True, show_progress=False)
    assert first.skipped == 0 and first.planned == 6
    shard_rows = [json.loads(line) for line in
                  (out / "manifests" / "shard-1-of-2.jsonl").read_text().splitlines()]
    assert len(shard_rows) == 6 and all(r["steps"] == 3 for r in shard_rows)
    generate(real, out, new, shard=(0, 2), overwrite=True, show_progress=False)
    merged = rows(out)
    assert sorted(p.name for p in (out / "manifests").iterdir()) == [
        "shard-0-of-2.jsonl", "shard-1-of-2.jsonl"]  # the 3-shard files are gone
    assert len(merged) == 12 and len({(r["source"], r["variant"]) for r in merged}) == 12
    assert all(r["steps"] == 3 for r in merged)  # no stale row survives
    broken = [r for r in merged if r["source"] == "square/img01.png"]
    assert [r["status"] for r in broken] == ["failed", "failed"]


class FailsOnTheThirdBatch:
    """A real backend that fails as a GPU running out of memory would, on its third batch."""

    def __init__(self, backend):
        self.backend, self.settings, self.calls = backend, backend.settings, 0

    def provenance(self) -> dict:
        return self.backend.provenance()

    def __call__(self, images, seeds):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("CUDA out of memory")
        return self.backend(images, seeds)


def test_the_shard_file_is_closed_when_the_generator_fails(models, real, tmp_path, monkeypatch):
    from mixdiff.generate import manifest
    from mixdiff.generate.backends import build_backend

    with manifest.ShardWriter(tmp_path / "m" / "shard-0-of-1.jsonl") as writer:
        writer.write([{"a": 1}])
    assert writer.handle.closed
    closed = []
    original_close = manifest.ShardWriter.close
    monkeypatch.setattr(manifest.ShardWriter, "close",
                        lambda self: closed.append(self) or original_close(self))
    working = build_backend(settings(models, "sdedit", batch_size=1).resolved())
    failing = FailsOnTheThirdBatch(working)
    with pytest.raises(RuntimeError, match="out of memory"):
        generate(real, tmp_path / "out", failing.settings, backend=failing, show_progress=False)
    assert len(closed) == 1 and closed[0].handle.closed
    shard = (tmp_path / "out" / "manifests" / "shard-0-of-1.jsonl").read_text().splitlines()
    assert len(shard) == 2  # the two outputs written before the failure are recorded
    resumed = generate(real, tmp_path / "out", failing.settings, show_progress=False)
    assert (resumed.skipped, resumed.written) == (2, 4)


def test_library_noise_stays_out_of_the_output(models, real, tmp_path):
    """What a user sees from `generate` and `train-generator`: our lines, not the libraries'."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # a user's defaults
    env["HF_HUB_OFFLINE"] = "1"
    cli = [sys.executable, "-m", "mixdiff.cli"]
    generated = subprocess.run(cli + generate_args(real, tmp_path / "S", "--model",
                                                   str(models["sd-image-variations"]),
                                                   "--steps", "2", "--resolution", "16"),
                               capture_output=True, text=True, env=env, timeout=300)
    assert generated.returncode == 0, generated.stderr
    # a real tree smaller than one batch: used to loop for ever (drop_last gave no batch)
    small = make_tree(tmp_path / "small", per_class=1)
    trained = subprocess.run(cli + ["train-generator", "--data", str(small), "--out",
                                    str(tmp_path / "ddpm"), "--steps", "2", "--batch-size", "4",
                                    "--resolution", "16"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert trained.returncode == 0, trained.stderr
    assert json.loads((tmp_path / "ddpm" / "training.json").read_text())["images"] == 3
    for result, ours in ((generated, "6 written"), (trained, "2 steps in")):
        output = result.stdout + result.stderr
        assert ours in output
        for noise in ("accelerate", "Loading pipeline components", "Loading weights",
                      "should be kept in float32", "FutureWarning", "DeprecationWarning",
                      "deprecated"):
            assert noise not in output, output


def test_generator_training_settings_are_checked_before_anything(real, tmp_path):
    fine = GeneratorTraining(resolution=16, block_out_channels=(8, 16), steps=3, batch_size=4,
                             warmup_steps=1, num_workers=0)
    for change, message in (({"steps": 0}, "--steps must be at least 1, not 0"),
                            ({"batch_size": 0}, "--batch-size must be at least 1"),
                            ({"resolution": 0}, "--resolution must be at least 1"),
                            ({"resolution": 15}, "--resolution 15: .* multiple of 2"),
                            ({"channels": 2}, "--channels 2 is not one of: 1, 3"),
                            ({"lr": 0.0}, "--lr must be positive"),
                            ({"lr": float("nan")}, "--lr must be a finite number, not nan")):
        with pytest.raises(ConfigError, match=message):
            train_generator(real, tmp_path / "ddpm", replace(fine, **change), show_progress=False)
        assert not (tmp_path / "ddpm").exists()  # nothing written, not even an untrained pipeline
    result = runner.invoke(app, ["train-generator", "--data", str(real), "--out",
                                 str(tmp_path / "ddpm"), "--steps", "0"])
    assert result.exit_code == 2 and "--steps must be at least 1" in result.output


def test_embedded_generator_works_offline_out_of_the_box(tmp_path):
    assert (EMBEDDED_DIR / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    record = json.loads((EMBEDDED_DIR / "training.json").read_text())
    assert record["settings"]["steps"] > 0 and record["final_loss_mean_last_200"] < 0.1
    real = make_tree(tmp_path / "real", per_class=1)
    result = runner.invoke(app, generate_args(real, tmp_path / "out", "--generator", "sdedit",
                                              "--steps", "4"))
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
    from mixdiff.pretrain.train import pretrain

    out = tmp_path / "syn"
    generate(real, out, settings(models, "sdedit", variants=2), show_progress=False)
    data = {"real": real, "syn0": out / "v0", "syn1": out / "v1"}
    run = pretrain(load_config(None, tiny_overrides(data, **{"data.mode": "mixdiff",
                                                            "trainer.batch_size": 2})),
                   tmp_path / "run")
    assert "train/synthetic_fraction" in (run / "metrics.csv").read_text()


def test_a_twin_damaged_in_place_is_made_again(models, real, tmp_path):
    """Same size, other bytes: the manifest's sha256 tells, and the re-run writes it again."""
    out = tmp_path / "out"
    first = generate(real, out, settings(models, "sdedit"), show_progress=False)
    victim = out / rows(out)[0]["path"]
    good = victim.read_bytes()
    victim.write_bytes(good[:-16] + bytes(16))
    again = generate(real, out, settings(models, "sdedit"), show_progress=False)
    assert (again.written, again.skipped) == (1, first.written - 1)
    assert victim.read_bytes() == good  # seeded: the same twin as before


@pytest.mark.parametrize("workers", [0, 1])
def test_generator_training_names_a_truncated_image(tmp_path, workers):
    real = make_tree(tmp_path / "real", per_class=2)
    bad = real / "circle" / "img01.png"
    bad.write_bytes(bad.read_bytes()[:60])  # the header survives, the pixels do not
    cfg = GeneratorTraining(resolution=16, block_out_channels=(8, 16), steps=3, batch_size=2,
                            warmup_steps=1, num_workers=workers)
    with pytest.raises(UnreadableImageError, match=r"cannot read image .*img01\.png.*data verify"):
        train_generator(real, tmp_path / "ddpm", cfg, show_progress=False)
    result = runner.invoke(app, ["train-generator", "--data", str(real), "--out",
                                 str(tmp_path / "ddpm"), "--steps", "3", "--resolution", "16",
                                 "--batch-size", "2"])
    assert result.exit_code == 2 and "img01.png" in result.output


def test_options_a_generator_ignores_are_said_and_not_recorded():
    import io
    import logging

    given = GenerateSettings(generator="sdedit", model="x", guidance=7.0, noise_level=5,
                             safety_checker=True, quality=80, format="png", strength=0.4)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("mixdiff.generate.settings")
    logger.addHandler(handler)
    try:
        done = given.resolved()
    finally:
        logger.removeHandler(handler)
    said = stream.getvalue()
    for option in ("--guidance 7.0", "--noise-level 5", "--safety-checker True", "--quality 80"):
        assert f"{option} is not used by" in said, said
    assert "--strength" not in said and done.strength == 0.4  # sdedit uses it
    defaults = GenerateSettings()
    assert (done.guidance, done.noise_level, done.safety_checker, done.quality) == \
        (None, defaults.noise_level, defaults.safety_checker, defaults.quality)
    # so a re-run that changes only an ignored option is the same run, and so is an OUT
    # written before ignored options were reset (its generate.yaml has sdedit's guidance 0.0)
    again = replace(given, guidance=1.0, quality=50).resolved()
    assert again.output_settings() == done.output_settings()
    older = {**done.output_settings(), "guidance": 0.0, "quality": 95}
    assert changed_settings(older, done.output_settings()) == []
    assert changed_settings({**older, "strength": 0.5}, done.output_settings()) == ["strength"]
