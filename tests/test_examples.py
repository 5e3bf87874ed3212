"""Every script in examples/ runs, on a tiny tree, for a few steps (as a user would run it)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, cwd: Path, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("script, written", [("simclr_loop.py", "simclr_encoder.pt"),
                                             ("lightly_loop.py", "lightly_encoder.ckpt")])
def test_a_training_loop_on_the_pairing(tiny_data, tmp_path, script, written):
    if script.startswith("lightly"):
        pytest.importorskip("lightly")
    said = _run(script, tmp_path, "--real", str(tiny_data["real"]), "--synthetic",
                str(tiny_data["syn0"]), "--steps", "2", "--batch-size", "4", "--image-size", "16")
    assert "step 2: loss" in said and (tmp_path / written).stat().st_size > 0


def test_a_timm_model_evaluated_from_python(eval_runs, tmp_path):
    import timm
    import torch

    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), tmp_path / "w.pth")
    out = tmp_path / "results"
    _run("evaluate_timm.py", tmp_path, "--model", "timm/resnet18", "--checkpoint",
         str(tmp_path / "w.pth"), "--train", str(eval_runs["train"]), "--test",
         str(eval_runs["val"]), "--out", str(out), "--image-size", "32")
    for command in ("knn", "linear", "robustness"):
        result = json.loads(next((out / "eval" / command).glob("*.json")).read_text())
        assert result["settings"]["model"] == "timm/resnet18" and 0 <= result["value"] <= 1
