"""How `mixdiff generate` stores its twins: JPEG by default (fast to decode), `--save-size` to a
smaller side, recorded in the manifest and generate.yaml, and refused when it changes on an OUT."""

from __future__ import annotations

import json

import yaml
from PIL import Image
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.generate.runner import stored

from conftest import make_tree

runner = CliRunner()


def test_twins_are_jpeg_by_default_and_stored_at_the_asked_side(tmp_path):
    real = make_tree(tmp_path / "real", per_class=1)
    out = tmp_path / "syn"
    command = ["generate", "--real", str(real), "--out", str(out), "--generator", "sdedit",
               "--steps", "2", "--device", "cpu", "--save-size", "12"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["status"] == "ok" and r["save_size"] == 12 for r in rows)
    for row in rows:
        assert row["path"].endswith(".jpg")
        with Image.open(out / row["path"]) as image:  # the embedded DDPM makes 32 px squares
            assert (image.format, image.size) == ("JPEG", (12, 12))
    saved = yaml.safe_load((out / "generate.yaml").read_text())
    assert (saved["format"], saved["quality"], saved["save_size"]) == ("jpg", 95, 12)
    again = runner.invoke(app, command)
    assert again.exit_code == 0 and "0 written" in again.output and "3 already there" in \
        again.output
    changed = runner.invoke(app, command[:-1] + ["16"])
    assert changed.exit_code == 2 and "save_size: 12 -> 16" in changed.output
    refused = runner.invoke(app, command[:-1] + ["0"])
    assert refused.exit_code == 2 and "--save-size must be at least 1" in refused.output


def test_stored_side_keeps_the_aspect_ratio():
    image = Image.new("RGB", (40, 20))
    assert stored(image, 10).size == (20, 10)
    assert stored(image, 30).size == (60, 30)  # as asked, also upwards
    assert stored(image, None) is image and stored(image, 20) is image
