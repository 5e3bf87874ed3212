"""`mixdiff quickstart` end to end at its smallest: every real stage (prepare Fashion-MNIST from
Debian's files, SDEdit twins from the embedded DDPM, pre-training in the four data modes,
evaluation, report, verdict), then a second run that reuses every stage."""

import json

import pytest
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.data.fashion_mnist import DEBIAN_DIR

pytestmark = [pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="needs dataset-fashion-mnist"),
              pytest.mark.slow]

SMALLEST = ["--fast", "--per-class", "4", "--epochs", "1"]


def _values(node):
    """Every accuracy-like number of a results.json row list."""
    for row in node:
        for key in ("value", "top5"):
            if row.get(key) is not None:
                yield row[key]


def test_quickstart_runs_every_stage_then_reuses_them(tmp_path):
    out = tmp_path / "qs"
    first = CliRunner().invoke(app, ["quickstart", *SMALLEST, "--out", str(out)])
    assert first.exit_code == 0, first.output
    record = json.loads((out / "quickstart.json").read_text())
    names = [stage["stage"] for stage in record["stages"]]
    assert names[:5] == ["prepare Fashion-MNIST", "generate SDEdit twins",
                         "pretrain untrained-s0", "evaluate untrained-s0", "evaluate pixels"]
    assert sum(name.startswith("pretrain simclr-") for name in names) == 4  # the four data modes
    assert record["stages"][1]["written"] == 40  # one twin per training image (4 per class)
    for name in ("results.md", "results.csv", "results.json", "id_vs_ood.png", "radar.png",
                 "curves.png", "pairs.png"):
        assert (out / "report" / name).stat().st_size > 0, name
    document = json.loads((out / "report" / "results.json").read_text())
    values = list(_values(document["rows"]))
    assert len(values) >= 5 * 3 and all(0.0 <= v <= 1.0 for v in values)
    kinds = {s["label"]: s["kind"] for s in document["settings"]}
    assert kinds["untrained"] == "untrained" and kinds["pixels"] == "pixels"
    assert "| untrained | 1 |" in (out / "report" / "results.md").read_text()

    # every mode against the untrained encoder, the others against real: paired by seed
    comparisons = record["comparisons"]
    assert len(comparisons) == 3 * (4 + 3)  # (linear, knn, shift) x (4 vs untrained, 3 vs real)
    def value(run, command, name):
        path = out / "runs" / run / "eval" / command / f"{name}.json"
        return json.loads(path.read_text())["value"]
    for c in comparisons:
        command, name = {"linear": ("linear", "fashion-mnist"), "knn": ("knn", "fashion-mnist"),
                         "shift": ("robustness", "corruptions")}[c["metric"]]
        baseline = "untrained-s0" if c["baseline"] == "untrained" else f"simclr-{c['baseline']}-s0"
        assert c["seeds"] == [0] and c["ci95"] is None  # one seed: no interval
        assert c["difference"] == pytest.approx(value(f"simclr-{c['mode']}-s0", command, name) -
                                                value(baseline, command, name))
    assert {(c["mode"], c["baseline"]) for c in comparisons} >= {("mixdiff", "real"),
                                                                ("real", "untrained")}
    verdict = record["verdict"]
    assert verdict[0].startswith("--fast is a smoke check") and "no number below is a claim" \
        in verdict[0]
    assert "One seed" in verdict[1] and any("MixDiff − real" in line for line in verdict)
    assert "smoke check" in first.output

    again = CliRunner().invoke(app, ["quickstart", *SMALLEST, "--out", str(out)])
    assert again.exit_code == 0, again.output
    stages = json.loads((out / "quickstart.json").read_text())["stages"]
    assert stages[0]["train"]["written"] == stages[0]["test"]["written"] == 0
    assert stages[1]["written"] == 0 and stages[1]["reused"] == 40
    assert all(s["reused"] for s in stages if s["stage"].startswith("pretrain"))
    assert all(s["evaluated"] == [] for s in stages if s["stage"].startswith("evaluate"))

    # another strength: its own twins folder and runs, beside the real runs it is compared to
    other = CliRunner().invoke(app, ["quickstart", *SMALLEST, "--strength", "0.5", "--modes",
                                     "real,mixdiff", "--out", str(out)])
    assert other.exit_code == 0, other.output
    stages = {s["stage"]: s for s in json.loads((out / "quickstart.json").read_text())["stages"]}
    assert stages["generate SDEdit twins"]["written"] == 40
    assert len(list((out / "synthetic-strength-0.5" / "v0").rglob("*.jpg"))) == 40
    assert stages["pretrain simclr-real-s0"]["reused"]
    from mixdiff.quickstart import Paths, run_overrides, settings_for

    half = settings_for("fast", strength=0.5)
    assert f"data.synthetic=[{out / 'synthetic' / 'v0'}]" in run_overrides(
        half, Paths(out), "simclr", "real", 0)  # a real run's config is every strength's
    assert not stages["pretrain simclr-mixdiff-st0.5-s0"]["reused"]
    assert "synthetic-strength-0.5/v0" in \
        (out / "runs" / "simclr-mixdiff-st0.5-s0" / "config.yaml").read_text()
    # twins made with other settings than the quickstart's: its own advice, not generate's
    settings = out / "synthetic-strength-0.5" / "generate.yaml"
    settings.write_text(settings.read_text().replace("steps: 50", "steps: 40"))
    changed = CliRunner().invoke(app, ["quickstart", *SMALLEST, "--strength", "0.5", "--modes",
                                       "real,mixdiff", "--out", str(out)])
    said = " ".join(changed.output.split())
    assert changed.exit_code == 2 and "holds the twins of another quickstart" in said
    assert "steps: 40 -> 50" in said and "--overwrite" not in said  # it has no such option

    longer = CliRunner().invoke(app, ["quickstart", *SMALLEST[:-1], "2", "--out", str(out)])
    assert longer.exit_code == 0, longer.output  # runs of another length are not reused
    stages = {s["stage"]: s for s in json.loads((out / "quickstart.json").read_text())["stages"]}
    assert not any(s["reused"] for name, s in stages.items()
                   if name.startswith("pretrain simclr"))
    assert stages["pretrain untrained-s0"]["reused"]  # the reference does not depend on it
    assert (out / "runs" / "simclr-mixdiff-s0" / "metrics.csv").read_text().count("\n") == 3

    # another test set (--test-per-class): the same runs, each evaluated again on it (the
    # quickstart replaces its own results, which `mixdiff eval` would refuse to)
    longer = SMALLEST[:-1] + ["2"]
    retest = CliRunner().invoke(app, ["quickstart", *longer, "--test-per-class", "3",
                                      "--out", str(out)])
    assert retest.exit_code == 0, retest.output
    stages = json.loads((out / "quickstart.json").read_text())["stages"]
    assert all(s["reused"] for s in stages if s["stage"].startswith("pretrain"))
    assert all(s["evaluated"] for s in stages if s["stage"].startswith("evaluate"))
    # fewer epochs than its runs were trained for (Q5), other training images (Q2): refused in
    # one line, never mixed with the runs of these settings
    for options, said in ((SMALLEST, "trainer.max_epochs: 2 -> 1"),
                          (["--fast", "--per-class", "3", "--epochs", "2"],
                           "the training images: 30 images where there were 40")):
        refused = CliRunner().invoke(app, ["quickstart", *options, "--test-per-class", "3",
                                           "--out", str(out)])
        message = " ".join(refused.output.split())
        assert refused.exit_code == 2 and said in message, refused.output
        assert "was made with other settings than this call asks" in message


def test_quickstart_says_which_stage_failed(tmp_path, monkeypatch):
    for option, value in (("--strength", "1.5"), ("--real-fraction", "0")):
        bad = CliRunner().invoke(app, ["quickstart", *SMALLEST, "--out", str(tmp_path / "q"),
                                       option, value])
        assert bad.exit_code == 2 and option in bad.output  # before any stage has run
        assert not (tmp_path / "q").exists()
    import mixdiff.quickstart
    from mixdiff.errors import DatasetError

    def failing(settings, paths):
        raise DatasetError("the data is bad")

    monkeypatch.setattr(mixdiff.quickstart, "_generate", failing)
    bad = CliRunner().invoke(app, ["quickstart", *SMALLEST, "--out", str(tmp_path / "q")])
    assert bad.exit_code == 2
    assert "stage `generate SDEdit twins` failed: the data is bad" in bad.output
    assert "run the same command again" in bad.output
    wrong = CliRunner().invoke(app, ["quickstart", "--methods", "byol", "--out", str(tmp_path)])
    assert wrong.exit_code == 2 and "simclr" in wrong.output


def test_a_bug_in_a_stage_leaves_its_traceback_in_a_log(tmp_path, monkeypatch):
    import mixdiff.quickstart

    def broken(settings, paths):
        raise RuntimeError("a bug")

    monkeypatch.setattr(mixdiff.quickstart, "_prepare", broken)
    bad = CliRunner().invoke(app, ["quickstart", *SMALLEST, "--out", str(tmp_path / "q")])
    assert bad.exit_code == 2 and "stage `prepare Fashion-MNIST` failed: RuntimeError: a bug" \
        in bad.output
    log = tmp_path / "q" / "logs" / "prepare Fashion-MNIST.log"
    assert "RuntimeError: a bug" in log.read_text()


@pytest.mark.parametrize("stop", ["ctrl-c", "run interrupted"])
def test_a_stopped_quickstart_says_how_to_continue(tmp_path, monkeypatch, stop):
    import signal

    import mixdiff.quickstart
    from mixdiff.pretrain.callbacks import RunInterrupted

    def stopped(settings, paths):
        if stop == "ctrl-c":
            raise KeyboardInterrupt
        raise RunInterrupted(signal.SIGTERM, 0, 3, tmp_path / "last.ckpt", False)

    monkeypatch.setattr(mixdiff.quickstart, "_prepare", stopped)
    result = CliRunner().invoke(app, ["quickstart", *SMALLEST, "--out", str(tmp_path / "q")])
    signum = signal.SIGINT if stop == "ctrl-c" else signal.SIGTERM
    said = " ".join(result.output.split())
    assert result.exit_code == 128 + signum, result.output
    assert f"stopped by {signal.Signals(signum).name} during stage `prepare Fashion-MNIST`" in said
    assert "run the same command again to continue" in said and "failed" not in said
    assert not (tmp_path / "q" / "logs").exists()  # no traceback log: nothing went wrong


def test_quickstart_adds_extra_positives_and_filters_twins_by_score(tmp_path):
    """--modes real,mixdiff,extra --synthetic-weight 0.5 --filter X: the real run scores every
    twin once, the twin modes train without those below X (named by it, beside the real run they
    are compared to), and extra weights its twin by lambda."""
    import csv

    out = tmp_path / "qs"
    args = ["quickstart", *SMALLEST, "--out", str(out), "--modes", "mixdiff,extra,real",
            "--synthetic-weight", "0.5", "--filter", "0.97"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "quickstart.json").read_text())
    names = [stage["stage"] for stage in record["stages"]]
    real_at = names.index("evaluate simclr-real-s0")
    assert names[real_at + 1] == "score twins simclr s0"  # scored before the twin modes train
    assert names[real_at + 2:real_at + 6] == [
        "pretrain simclr-mixdiff-min0.97-s0", "evaluate simclr-mixdiff-min0.97-s0",
        "pretrain simclr-extra-w0.5-min0.97-s0", "evaluate simclr-extra-w0.5-min0.97-s0"]
    with (out / "synthetic" / "scores-simclr-s0.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    twins = sorted(str(p) for p in (out / "synthetic" / "v0").rglob("*.jpg"))
    assert sorted(row["twin"] for row in rows) == twins  # every twin, once
    below = sum(float(row["similarity"]) < 0.97 for row in rows)
    assert 0 < below < len(rows)  # about half: 0.97 is near the median of these 1-epoch scores
    for run in ("simclr-mixdiff-min0.97-s0", "simclr-extra-w0.5-min0.97-s0"):
        summary = json.loads((out / "runs" / run / "data.json").read_text())
        assert summary["synthetic_twins_dropped"] == below, run
    extra = json.loads((out / "runs" / "simclr-extra-w0.5-min0.97-s0" / "data.json").read_text())
    assert extra["views_per_sample"] == 3 and extra["twin_views"] == 1
    assert "synthetic_weight: 0.5" in \
        (out / "runs" / "simclr-extra-w0.5-min0.97-s0" / "config.yaml").read_text()
    assert {(c["mode"], c["baseline"]) for c in record["comparisons"]} == {
        (mode, "untrained") for mode in ("real", "mixdiff", "extra")} | {
        ("mixdiff", "real"), ("extra", "real")}
    assert any(line.startswith("simclr: extra (lambda 0.5, twins of similarity >= 0.97) − real")
               for line in record["verdict"])

    lonely = CliRunner().invoke(app, ["quickstart", *SMALLEST, "--out", str(out),
                                      "--synthetic-weight", "0.5"])
    assert lonely.exit_code == 2 and "add extra to --modes" in " ".join(lonely.output.split())
    unscored = CliRunner().invoke(app, ["quickstart", *SMALLEST, "--out", str(out), "--modes",
                                        "mixdiff", "--filter", "0.5"])
    assert unscored.exit_code == 2 and "--modes needs real" in " ".join(unscored.output.split())


def test_three_seeds_give_a_verdict_that_counts_the_test_images_and_corrects_for_many(tmp_path):
    """--seeds 3 on a test set of its own size (--test-per-class): every comparison paired on the
    same images (one fingerprint), its two-level interval recomputed from the runs' per-image
    predictions, Holm's correction over the call, and each verdict in one of three words."""
    import numpy as np

    from mixdiff.evaluate.predictions import per_image_scores, predictions_of
    from mixdiff.report.inference import two_level

    out = tmp_path / "qs"
    result = CliRunner().invoke(app, ["quickstart", *SMALLEST, "--test-per-class", "6",
                                      "--seeds", "3", "--modes", "real,mixdiff",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(list((out / "fashion-mnist" / "test").rglob("*.png"))) == 60
    assert len(list((out / "fashion-mnist" / "train").rglob("*.png"))) == 40
    record = json.loads((out / "quickstart.json").read_text())
    comparisons = record["comparisons"]
    assert len(comparisons) == 3 * (2 + 1)
    assert all(c["images"] == 60 and c["seeds"] == [0, 1, 2] for c in comparisons)
    assert all(c["family"] == 9 and isinstance(c["holm"], bool) for c in comparisons)
    assert all(c["verdict"] in ("difference", "equivalent", "undecided") for c in comparisons)
    fingerprints = {json.loads(p.read_text())["images_sha256"]
                    for p in (out / "runs").glob("*/eval/*/*.json")}
    assert len(fingerprints) == 1  # every result, the raw pixels' too, scored the same images
    assert (out / "runs" / "untrained-s0" / "eval" / "robustness" / "corruptions-pixels" /
            "predictions.npz").is_file()  # the floor under the corruptions

    versus = next(c for c in comparisons if (c["mode"], c["baseline"], c["metric"]) ==
                  ("mixdiff", "real", "shift"))

    def scores(run):
        path = out / "runs" / run / "eval" / "robustness" / "corruptions.json"
        return per_image_scores(json.loads(path.read_text()), predictions_of(path))

    d = np.stack([scores(f"simclr-mixdiff-s{s}") - scores(f"simclr-real-s{s}") for s in range(3)])
    assert versus["ci95_two_level"] == pytest.approx(list(two_level(d).ci))
    assert versus["mde80"] == pytest.approx(two_level(d).mde())
    verdict = record["verdict"]
    assert verdict[1].startswith("9 comparisons, paired by seed on the same 60 test images")
    lines = [line for line in verdict if line.startswith("simclr: MixDiff − real")]
    assert len(lines) == 3 and all(("a difference" in line) or ("no difference larger" in line)
                                   or ("undecided" in line) for line in lines)
