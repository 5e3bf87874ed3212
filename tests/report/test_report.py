"""`mixdiff report`: tables and figures from run folders. Most runs here are written file by file
(config.yaml, data.json, metrics.csv and eval result JSONs in the evaluation contract's format)
with plausible numbers, so that 4 data modes x 3 seeds x 2 methods cost nothing; one real tiny
pre-training run checks the files `mixdiff pretrain` writes are read as they are."""

from __future__ import annotations

import csv
import json
import statistics
import zlib

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats
from PIL import Image
from typer.testing import CliRunner

from conftest import make_tree, tiny_overrides
from mixdiff.cli import app
from mixdiff.config import load_config
from mixdiff.report.build import write_report
from mixdiff.report.collect import load_runs
from mixdiff.report.id_ood import id_vs_ood_points
from mixdiff.report.radar import INNER, radar_panels
from mixdiff.report.results import result_rows
from mixdiff.report.grouping import group_settings
from mixdiff.runs import Metric, RunDir

runner = CliRunner()
SUITES = ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")
# (in-distribution top-1, mean shift top-1) read off the paper's figures; pooled: its "Mixing"
PAPER = {("simclr", "real"): (0.666, 0.289), ("simclr", "synthetic"): (0.610, 0.263),
         ("simclr", "mixdiff"): (0.739, 0.359), ("simclr", "pooled"): (0.636, 0.270),
         ("barlow_twins", "real"): (0.681, 0.281), ("barlow_twins", "synthetic"): (0.586, 0.240),
         ("barlow_twins", "mixdiff"): (0.720, 0.322), ("barlow_twins", "pooled"): (0.650, 0.262)}
SUITE_OFFSET = {"imagenet-v2": 0.22, "imagenet-sketch": -0.08, "imagenet-a": -0.20,
                "imagenet-r": 0.06}  # so that the four suites average to the paper's mean


def _result(command: str, dataset: str, top1: float, classes: int = 100, images: int = 5000,
            split: str = "val", epoch: int = 99, weights: str = "student", **extra) -> dict:
    """A result file in the evaluation contract's format."""
    return {"command": command, "protocol": f"offline {command} (test fixture)", "online": False,
            "dataset": dataset, "split": split, "classes": classes, "images": images,
            "top1": round(top1, 4), "metric": "top1", "value": round(top1, 4),
            "weights": weights, "checkpoint": {"path": "checkpoints/last.ckpt",
                                                 "sha256": "0" * 64, "epoch": epoch,
                                                 "global_step": 1000},
            "settings": {}, "details": {}, "mixdiff_version": "test", "created": "now", **extra}


def write_run(base, method: str, mode: str, seed: int, id_top1: float | None = None,
              shift: dict[str, float] | None = None, knn: float | None = None,
              dataset: str = "imagenet-100", epochs: int = 5, linear: bool = True,
              weights: str = "student", name: str | None = None):
    """A run folder as `mixdiff pretrain` + `mixdiff eval` leave it; numbers given or from PAPER
    with a seeded jitter. Returns (path, the numbers written)."""
    rng = np.random.default_rng(zlib.crc32(f"{method}-{mode}-{seed}".encode()))
    run = RunDir(base / (name or f"{method}-{mode}-s{seed}"))
    paper_id, paper_shift = PAPER.get((method, mode), (None, None))
    id_top1 = paper_id + rng.normal(0, 0.006) if id_top1 is None else id_top1
    if shift is None:
        shift = {s: paper_shift + SUITE_OFFSET[s] + rng.normal(0, 0.005) for s in SUITES}
    cfg = load_config(None, [f"method={method}", f"data.mode={mode}",
                             f"data.real=/data/{dataset}/train", f"data.val=/data/{dataset}/val",
                             "data.synthetic=[/data/syn/v0]", f"trainer.seed={seed}",
                             f"trainer.max_epochs={epochs}"]
                      + (["augment.recipe=dino"] if method == "dino" else []))
    run.root.mkdir(parents=True)
    OmegaConf.save(cfg, run.config)
    run.data_summary.write_text(json.dumps({"mode": mode, "classes": [f"n{i:08d}"
                                                                      for i in range(100)],
                                            "val_images": 5000}))
    with open(run.metrics, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["epoch", "step", Metric.TRAIN_LOSS,
                                         Metric.KNN_VAL_TOP1, Metric.PROBE_VAL_TOP1])
        writer.writeheader()
        online = {}
        for epoch in range(epochs):
            progress = (epoch + 1) / epochs
            online = {Metric.KNN_VAL_TOP1: round(id_top1 * (0.5 + 0.45 * progress), 4),
                      Metric.PROBE_VAL_TOP1: round(id_top1 * (0.4 + 0.5 * progress), 4)}
            writer.writerow({"epoch": epoch, "step": 100 * (epoch + 1),
                             Metric.TRAIN_LOSS: round(6 - 2 * progress + rng.normal(0, .05), 4),
                             **online})
    files = {}
    if linear:
        files[("linear", dataset)] = _result("linear", dataset, id_top1, weights=weights,
                                             top5=min(1, id_top1 + .2))
    if knn is not None:
        files[("knn", dataset)] = _result("knn", dataset, knn, weights=weights)
    for suite, top1 in shift.items():
        files[("robustness", suite)] = _result("robustness", suite, top1, classes=200,
                                               images=3000, split="test", weights=weights)
    for (command, name), result in files.items():
        path = run.eval_result(command, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    return run.root, {"id": id_top1, "shift": shift, "online": online, "files": files}


@pytest.fixture(scope="module")
def grid_runs(tmp_path_factory):
    """4 data modes x 3 seeds x 2 methods."""
    base = tmp_path_factory.mktemp("runs")
    made = [write_run(base, method, mode, seed) for method in ("simclr", "barlow_twins")
            for mode in ("real", "synthetic", "mixdiff", "pooled") for seed in range(3)]
    return [path for path, _ in made], {path.name: numbers for path, numbers in made}


def _md_row(markdown: str, prefix: str) -> dict[str, str]:
    """The first markdown table row starting with `prefix`, as {header: cell}."""
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            header = next(lines[j] for j in range(i, -1, -1) if lines[j + 1].startswith("|---"))
            return dict(zip([c.strip() for c in header.strip("|").split("|")],
                            [c.strip() for c in line.strip("|").split("|")]))
    raise AssertionError(f"no row {prefix!r}")


def _not_blank(path, min_width=400):
    image = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert image.shape[1] >= min_width and image.std() > 10, f"{path} looks blank"


def test_seeds_group_into_settings_and_points_are_their_means(grid_runs):
    paths, numbers = grid_runs
    settings = group_settings(load_runs(paths))
    assert len(settings) == 8 and all(len(s.runs) == 3 for s in settings)
    assert {s.label for s in settings} == {f"{m} · {d}" for m, d in PAPER}
    rows = result_rows(settings)
    points, notes = id_vs_ood_points(settings, rows)
    assert not notes and len(points) == 8
    for p in points:
        runs = [numbers[r] for r in p.runs]
        assert p.x.mean == pytest.approx(statistics.fmean(r["id"] for r in runs), abs=1e-4)
        shift_means = [statistics.fmean(r["shift"].values()) for r in runs]
        assert p.y.mean == pytest.approx(statistics.fmean(shift_means), abs=1e-4)
        assert p.y.high - p.y.mean == pytest.approx(statistics.stdev(shift_means), abs=1e-4)
        assert p.suites == tuple(sorted(SUITES)) and p.x.n == 3
    minmax, _ = id_vs_ood_points(settings, rows, "minmax")
    assert minmax[0].x.low == pytest.approx(min(numbers[r]["id"] for r in minmax[0].runs),
                                            abs=1e-4)


def test_radar_axes_are_scaled_min_max_over_the_settings(grid_runs):
    paths, _ = grid_runs
    settings = group_settings(load_runs(paths))
    (panel,), notes = radar_panels(settings, result_rows(settings))
    assert not notes
    assert panel.axes[0] == "imagenet-100 linear" and set(panel.axes[1:]) == set(SUITES)
    scaled = panel.scaled()
    assert scaled.shape == (8, 5)
    assert np.allclose(scaled.min(axis=0), INNER) and np.allclose(scaled.max(axis=0), 1.0)
    best = max(range(8), key=lambda i: panel.values[i][0].mean)
    assert scaled[best, 0] == pytest.approx(1.0)


def test_report_writes_every_file_with_the_inputs_numbers(grid_runs, tmp_path):
    paths, numbers = grid_runs
    result = runner.invoke(app, ["report", *map(str, paths), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "r"
    document = json.loads((out / "results.json").read_text())
    rows = document["rows"]
    assert len(rows) == 24 * (1 + len(SUITES) + 2)  # linear, 4 suites, online kNN and probe
    for row in rows:
        written = numbers[row["run"]]
        if row["evaluation"] == "online":
            metric = Metric.KNN_VAL_TOP1 if row["command"] == "online_knn" else \
                Metric.PROBE_VAL_TOP1
            assert row["value"] == written["online"][metric] and row["checkpoint_epoch"] == 4
            assert row["classes"] == 100 and row["images"] == 5000 and row["split"] == "val"
        else:
            source = written["files"][(row["command"], row["dataset"])]
            for key in ("protocol", "dataset", "split", "classes", "images", "top1", "weights"):
                assert row[key] == source[key]
            assert row["checkpoint_epoch"] == 99
    with open(out / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    assert all(float(t["value"]) == pytest.approx(r["value"]) for t, r in zip(table, rows))
    assert {t["evaluation"] for t in table} == {"online", "offline"}
    markdown = (out / "results.md").read_text()
    for name in numbers:  # a row per run in the per-run table
        assert sum(line.startswith(f"| {name} |") for line in markdown.splitlines()) >= 1
    some = numbers["simclr-mixdiff-s1"]
    row = _md_row(markdown, "| simclr-mixdiff-s1 | simclr · mixdiff |")
    assert row["imagenet-100 linear"] == f"{100 * round(some['id'], 4):.1f}"
    assert row["imagenet-a"] == f"{100 * round(some['shift']['imagenet-a'], 4):.1f}"
    assert row["shift mean"] == f"{100 * statistics.fmean(some['shift'].values()):.1f}"
    assert row["online kNN"] == f"{100 * some['online'][Metric.KNN_VAL_TOP1]:.1f}"
    seeds = [round(numbers[f"simclr-mixdiff-s{i}"]["id"], 4) for i in range(3)]
    setting = _md_row(markdown, "| simclr · mixdiff | 3 |")
    assert setting["imagenet-100 linear"] == (f"{100 * statistics.fmean(seeds):.1f} ± "
                                              f"{100 * statistics.stdev(seeds):.1f}")
    assert len(document["id_vs_ood"]) == 8
    for name in ("id_vs_ood.png", "radar.png", "curves.png"):
        _not_blank(out / name)
    assert "pairs.png" in result.output  # the synthetic roots do not exist: said, not drawn


def test_settings_are_measured_against_the_untrained_encoder_and_real_paired_by_seed(tmp_path):
    numbers = {"untrained": ([0.600, 0.620, 0.610], [0.550, 0.560, 0.540], 0.30),
               "real": ([0.700, 0.690, 0.730], [0.650, 0.640, 0.690], 0.40),
               "mixdiff": ([0.720, 0.700, 0.740], [0.660, 0.660, 0.690], 0.41)}
    paths = []
    for kind, (linear, knn, shift) in numbers.items():
        for seed in range(3):
            mode = "real" if kind == "untrained" else kind
            paths.append(write_run(
                tmp_path, "simclr", mode, seed, id_top1=linear[seed], knn=knn[seed],
                shift={s: shift + 0.01 * seed for s in SUITES},
                epochs=0 if kind == "untrained" else 5,
                name=f"untrained-s{seed}" if kind == "untrained" else None)[0])
    result = runner.invoke(app, ["report", *map(str, paths), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [s["label"] for s in document["settings"]] == ["untrained", "simclr · real",
                                                          "simclr · mixdiff"]
    found = {(c["setting"], c["baseline"], c["metric"]): c for c in document["comparisons"]}
    assert set(found) == {(s, b, m) for s, b in (("simclr · real", "untrained"),
                                                 ("simclr · mixdiff", "untrained"),
                                                 ("simclr · mixdiff", "simclr · real"))
                          for m in ("linear", "knn", "shift")}
    for setting, baseline, index, metric in (("mixdiff", "real", 0, "linear"),
                                             ("real", "untrained", 1, "knn")):
        label = f"simclr · {setting}"
        expected = [a - b for a, b in zip(numbers[setting][index], numbers[baseline][index])]
        c = found[(label, "untrained" if baseline == "untrained" else f"simclr · {baseline}",
                   metric)]
        assert c["seeds"] == [0, 1, 2] and c["paired"]
        assert c["difference"] == pytest.approx(statistics.fmean(expected), abs=1e-6)
        interval = stats.ttest_1samp(expected, 0.0).confidence_interval(0.95)
        assert c["ci95"] == pytest.approx([interval.low, interval.high], abs=1e-6)
    shift = found[("simclr · mixdiff", "simclr · real", "shift")]  # the same offsets per seed
    assert shift["difference"] == pytest.approx(0.01, abs=1e-6)
    markdown = (tmp_path / "r" / "results.md").read_text()
    gain = _md_row(markdown, "| simclr · real | untrained |")
    # its interval excludes zero, but at 3 seeds not after Holm's correction over the 9
    assert gain["seeds"] == "0,1,2" and gain["linear"] == "+9.7 [+3.4, +15.9] undecided"
    learnt = found[("simclr · real", "untrained", "linear")]
    assert learnt["p_value"] < 0.05 and not learnt["holm"] and learnt["family"] == 9
    assert learnt["ci95_two_level"] is None  # fixtures without per-image predictions
    versus = _md_row(markdown, "| simclr · mixdiff | simclr · real |")
    assert versus["linear"].startswith("+1.3 [−") and "**" not in versus["linear"]
    assert _md_row(markdown, "| untrained | 3 |")["imagenet-100 linear"] == "61.0 ± 1.0"
    _not_blank(tmp_path / "r" / "id_vs_ood.png")


def test_missing_results_and_other_datasets_are_reported_not_mixed(tmp_path):
    base = tmp_path / "runs"
    a, _ = write_run(base, "simclr", "mixdiff", 0)
    b, b_numbers = write_run(base, "simclr", "real", 0, dataset="fashion-mnist",
                             shift={"corruptions": 0.5}, knn=0.8)
    # same in-distribution set as a, but kNN only and two of a's four shift sets
    c, _ = write_run(base, "simclr", "pooled", 0, id_top1=0.6, knn=0.55, linear=False,
                     shift={"imagenet-a": 0.1, "imagenet-r": 0.3})
    bare = base / "bare"
    bare.mkdir()
    OmegaConf.save(load_config(None, ["data.real=/d/x/train"]), bare / "config.yaml")
    report = write_report([a, b, c, bare], tmp_path / "out")
    assert any("bare" in n and "no offline results" in n for n in report.notes)
    assert any("bare" in n and "metrics.csv" in n for n in report.notes)
    assert any("imagenet-sketch, imagenet-v2 left out" in n for n in report.notes)
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [s["label"] for s in document["settings"]] == [
        "simclr · mixdiff", "simclr · real · fashion-mnist", "simclr · pooled",
        "simclr · real · x"]
    points = {p["setting"]: p for p in document["id_vs_ood"]}
    assert set(points) == {"simclr · mixdiff", "simclr · real · fashion-mnist", "simclr · pooled"}
    fashion = points["simclr · real · fashion-mnist"]
    assert fashion["dataset"].startswith("fashion-mnist") and fashion["id_command"] == "linear"
    assert fashion["id_top1"]["mean"] == pytest.approx(b_numbers["id"], abs=1e-4)  # not kNN
    assert fashion["shift_suites"] == ["corruptions"]  # never averaged with other datasets'
    pooled = points["simclr · pooled"]
    assert pooled["id_command"] == "knn" and pooled["id_top1"]["mean"] == 0.55
    assert pooled["shift_suites"] == points["simclr · mixdiff"]["shift_suites"] == [
        "imagenet-a", "imagenet-r"]  # the suites both runs of the dataset have
    assert pooled["shift_top1"]["mean"] == pytest.approx(0.2)
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "## fashion-mnist val, 100 classes" in markdown and "## imagenet-100 val" in markdown
    assert "fashion-mnist kNN" in markdown
    _not_blank(tmp_path / "out" / "radar.png")  # a radar beside grouped bars (2 axes)


def test_dino_teacher_is_the_runs_number_and_the_student_is_labelled(tmp_path):
    run, numbers = write_run(tmp_path, "dino", "mixdiff", 0, id_top1=0.78, weights="teacher",
                             shift={"imagenet-r": 0.4, "imagenet-a": 0.2})
    for command, dataset, top1 in (("linear", "imagenet-100", 0.7), ("robustness", "imagenet-r",
                                                                     0.3),
                                   ("robustness", "imagenet-sketch", 0.9)):
        path = RunDir(run).eval_result(command, f"{dataset}-student")  # as `mixdiff eval` names it
        path.write_text(json.dumps(_result(command, dataset, top1, weights="student")))
    settings = group_settings(load_runs([run]))
    rows = result_rows(settings)
    (point,), notes = id_vs_ood_points(settings, rows)
    assert point.x.mean == 0.78 and point.y.mean == pytest.approx(0.3)  # teacher, both sets
    assert point.suites == ("imagenet-a", "imagenet-r") and not notes
    columns = {(r.weights, r.command, r.dataset): r.column for r in rows}
    assert columns[("teacher", "linear", "imagenet-100")] == "imagenet-100 linear"
    assert columns[("student", "linear", "imagenet-100")] == "imagenet-100 linear (student)"
    assert columns[("student", "robustness", "imagenet-r")] == "imagenet-r (student)"
    (panel,), _ = radar_panels(settings, rows)
    assert panel.axes == ["imagenet-100 linear", "imagenet-a", "imagenet-r"]  # no student sets


def test_pairs_from_the_runs_synthetic_roots(tiny_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(load_config(None, tiny_overrides(tiny_data, **{"data.mode": "mixdiff"})),
                   run / "config.yaml")
    report = write_report([run], tmp_path / "out", pair_rows=3)
    _not_blank(tmp_path / "out" / "pairs.png", min_width=200)
    assert tmp_path / "out" / "pairs.png" in report.files


def test_real_run_is_read_as_pretrain_wrote_it(tiny_data, tmp_path):
    from mixdiff.pretrain.train import pretrain

    run = pretrain(load_config(None, tiny_overrides(tiny_data, **{"trainer.max_epochs": 2})),
                   tmp_path / "run")
    result = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    with open(run / "metrics.csv", newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    online = {r["command"]: r for r in rows}
    assert set(online) == {"online_knn", "online_probe"}
    assert online["online_knn"]["value"] == float(last[Metric.KNN_VAL_TOP1])
    assert online["online_knn"]["classes"] == 3 and online["online_knn"]["evaluation"] == "online"
    _not_blank(tmp_path / "out" / "curves.png")
    assert "no offline results" in result.output


def test_bad_inputs_give_one_line(tmp_path):
    not_a_run = runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "o")])
    assert not_a_run.exit_code == 2 and "config.yaml" in not_a_run.output
    run, _ = write_run(tmp_path, "simclr", "real", 0)
    broken = run / "eval" / "linear" / "imagenet-100.json"
    broken.write_text(json.dumps({"command": "linear"}))
    result = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "imagenet-100.json" in result.output and "lacks" in \
        result.output
    bad_spread = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "o"),
                                     "--spread", "iqr"])
    assert bad_spread.exit_code == 2 and "std" in bad_spread.output


def test_pairs_grid_shows_real_beside_each_variant(tmp_path):
    real = make_tree(tmp_path / "real", per_class=3)
    v0 = make_tree(tmp_path / "v0", per_class=3, ext=".jpg", seed=1)
    v1 = make_tree(tmp_path / "v1", per_class=2, seed=2)  # one twin per class missing
    result = runner.invoke(app, ["data", "grid", "--real", str(real), "--synthetic", str(v0),
                                 "--synthetic", str(v1), "--out", str(tmp_path / "g.png"),
                                 "--rows", "4"])
    assert result.exit_code == 0, result.output
    width, height = Image.open(tmp_path / "g.png").size
    assert width < height < 2 * width  # 4 rows of 3 columns


def _setting(method: str, mode: str):
    from mixdiff.report.collect import RunRecord
    from mixdiff.report.grouping import Setting

    config = {"method": method, "data": {"mode": mode}}
    record = RunRecord(f"{method}-{mode}", RunDir("unused"), config, {}, [], [])
    return Setting(f"{method} · {mode}", (record,))


def test_colour_is_the_method_or_with_one_method_the_mode():
    from mixdiff.report.style import legend_title, setting_styles

    one = [_setting("simclr", mode) for mode in ("real", "mixdiff", "pooled")]
    styles = setting_styles(one)
    assert len({s.colour for s in styles.values()}) == 3  # the modes told apart by colour too
    assert "colour and marker: data" in legend_title(one)
    two = [_setting(m, d) for m in ("simclr", "dino") for d in ("real", "mixdiff")]
    styles = setting_styles(two)
    assert styles["simclr · real"].colour == styles["simclr · mixdiff"].colour
    assert styles["simclr · real"].colour != styles["dino · real"].colour
    assert styles["simclr · real"].marker != styles["simclr · mixdiff"].marker
    assert legend_title(two) == "method · data (colour · marker)"


@pytest.mark.parametrize("damage", ["metrics.csv", "config.yaml", "data.json"])
def test_a_damaged_run_file_is_one_line_and_no_report_is_written(tmp_path, damage):
    run, _ = write_run(tmp_path, "simclr", "real", 0)
    good, _ = write_run(tmp_path, "simclr", "mixdiff", 0)
    damaged = {"metrics.csv": "epoch,step,train/loss\n0,12,xyz\n",
               "config.yaml": "method: [unclosed\n  : -\n",
               "data.json": "{\"classes\": [\n"}[damage]
    (run / damage).write_text(damaged)
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(good), str(run), "--out", str(out)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert str(run / damage) in said and "damaged" in said and "Traceback" not in said
    assert not out.exists()  # checked before anything is written: no half report


def test_settings_that_differ_get_labels_that_differ(tmp_path):
    """Labels show the keys that tell same-named settings apart: as many as it takes (not the
    first three found), so four settings never share one label."""
    values = {"data.image_size": (96, 128), "optim.lr": (0.1, 0.2),
              "simclr.temperature": (0.1, 0.2), "trainer.batch_size": (64, 128)}
    combos = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (the first three keys, the fourth)
    runs = []
    for n, (first, fourth) in enumerate(combos):
        run, _ = write_run(tmp_path, "simclr", "real", 0, name=f"r{n}")
        config = OmegaConf.load(run / "config.yaml")
        for key, (a, b) in values.items():
            pick = fourth if key == "trainer.batch_size" else first
            OmegaConf.update(config, key, (a, b)[pick])
        OmegaConf.save(config, run / "config.yaml")
        runs.append(run)
    labels = [s.label for s in group_settings(load_runs(runs))]
    assert len(set(labels)) == 4, labels
    assert labels[0] == "simclr · real (image_size=96, batch_size=64)"


def test_seeds_that_ran_differently_are_one_setting(tmp_path):
    """How a run was executed (the augmentation backend, decoding on the device, image checks,
    workers) is not a setting: the same keys a resume may change (config.EXECUTION_KEYS)."""
    runs = []
    for seed, how in ((0, {"augment.backend": "per_image", "data.decode": "cpu"}),
                      (1, {"augment.backend": "batched", "data.decode": "device",
                           "data.check_images": "none", "data.num_workers": 7})):
        run, _ = write_run(tmp_path, "simclr", "real", seed)
        config = OmegaConf.load(run / "config.yaml")
        for key, value in how.items():
            OmegaConf.update(config, key, value)
        OmegaConf.save(config, run / "config.yaml")
        runs.append(run)
    (setting,) = group_settings(load_runs(runs))
    assert setting.label == "simclr · real" and setting.seeds == [0, 1]


def _with_predictions(run, command: str, name: str, correct: dict, fingerprint: str = "abc"):
    """Rewrite a fixture result with per-image predictions (`correct`: condition -> bool per
    image; the value: the headline condition's mean, or the corruption grid's)."""
    from mixdiff.evaluate.predictions import PREDICTIONS_FILE, Predictions, write_predictions

    path = RunDir(run).eval_result(command, name)
    result = json.loads(path.read_text())
    images = len(next(iter(correct.values())))
    labels = np.zeros(images, dtype=np.int64)
    predicted = {c: np.where(ok, 0, 1) for c, ok in correct.items()}
    write_predictions(RunDir(run).eval_artifact(command, name, PREDICTIONS_FILE),
                      Predictions.single([f"c/{i}.png" for i in range(images)], ("c", "d"),
                                         labels, predicted))
    grid = {c.split("/")[0]: {c.split("/")[1]: float(ok.mean())}
            for c, ok in correct.items() if "/" in c}
    value = float(np.mean([v["3"] for v in grid.values()])) if grid else \
        float(next(iter(correct.values())).mean())
    result.update(images=images, images_sha256=fingerprint, top1=value, value=value,
                  predictions=f"{name}/{PREDICTIONS_FILE}")
    if grid:
        result["details"]["top1_by_corruption"] = grid
    if command == "knn":
        result["settings"]["k"] = [20]
    path.write_text(json.dumps(result))


def test_the_report_counts_the_test_images_where_runs_kept_their_predictions(tmp_path):
    from mixdiff.report.compare import paired_difference

    rng = np.random.default_rng(1)
    images, seeds = 3000, range(4)
    accuracy = {"untrained": 0.60, "real": 0.75, "mixdiff": 0.755}
    correct, paths = {}, []
    for kind, p in accuracy.items():
        for seed in seeds:
            name = f"untrained-s{seed}" if kind == "untrained" else None
            run, _ = write_run(tmp_path, "simclr", "real" if kind == "untrained" else kind, seed,
                               id_top1=p, knn=p, shift={"corruptions": p},
                               epochs=0 if kind == "untrained" else 5, name=name)
            ok = {c: rng.random(images) < p for c in ("clean", "k=20", "noise/3", "blur/3")}
            _with_predictions(run, "linear", "imagenet-100", {"clean": ok["clean"]})
            _with_predictions(run, "knn", "imagenet-100", {"k=20": ok["k=20"]})
            _with_predictions(run, "robustness", "corruptions",
                              {"clean": ok["clean"], "noise/3": ok["noise/3"],
                               "blur/3": ok["blur/3"]})
            correct[(kind, seed)] = ok
            paths.append(run)
    result = runner.invoke(app, ["report", *map(str, paths), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    found = {(c["setting"], c["baseline"], c["metric"]): c
             for c in json.loads((tmp_path / "r" / "results.json").read_text())["comparisons"]}
    assert len(found) == 9 and all(c["images"] == images for c in found.values())

    def by_hand(kind, baseline, score):
        scores = {s: score(correct[(kind, s)]) for s in seeds}
        base = {s: score(correct[(baseline, s)]) for s in seeds}
        return paired_difference({s: v.mean() for s, v in scores.items()},
                                 {s: v.mean() for s, v in base.items()}, scores, base)

    shift_score = lambda ok: (ok["noise/3"].astype(float) + ok["blur/3"]) / 2  # noqa: E731
    expected = {("simclr · mixdiff", "simclr · real", "shift"):
                by_hand("mixdiff", "real", shift_score),
                ("simclr · real", "untrained", "linear"):
                by_hand("real", "untrained", lambda ok: ok["clean"].astype(float))}
    for key, d in expected.items():
        assert found[key]["difference"] == pytest.approx(d.difference)
        assert found[key]["ci95_two_level"] == pytest.approx(list(d.two_level.ci))
        assert found[key]["mde80"] == pytest.approx(d.two_level.mde())
    # Holm over the nine, from their own p-values
    ordered = list(found.values())
    p_values = sorted(c["p_value"] for c in ordered)
    survivors = 0
    for rank, p in enumerate(p_values):
        if p > 0.05 / (len(p_values) - rank):
            break
        survivors += 1
    assert sum(c["holm"] for c in ordered) == survivors >= 3  # the gains over untrained
    learnt = found[("simclr · real", "untrained", "linear")]
    assert learnt["holm"] and learnt["verdict"] == "difference"
    markdown = (tmp_path / "r" / "results.md").read_text()
    assert _md_row(markdown, "| simclr · real | untrained |")["linear"].endswith("** difference")

    # one run scored on other images: its comparisons fall back to the seeds' t-interval
    _with_predictions(paths[-1], "linear", "imagenet-100",
                      {"clean": correct[("mixdiff", 3)]["clean"]}, fingerprint="other")
    write_report(paths, tmp_path / "r2")
    again = {(c["setting"], c["baseline"], c["metric"]): c for c in
             json.loads((tmp_path / "r2" / "results.json").read_text())["comparisons"]}
    assert again[("simclr · mixdiff", "simclr · real", "linear")]["ci95_two_level"] is None
    assert again[("simclr · real", "untrained", "linear")]["ci95_two_level"] is not None


def test_no_epochs_from_a_trained_checkpoint_is_not_the_untrained_reference(tmp_path):
    """trainer.max_epochs=0 with init_from= a trained checkpoint evaluates those trained weights:
    it was filed as the "untrained" reference (and every setting measured against it). It is a
    trained setting of its own, told apart by its label."""
    untrained, _ = write_run(tmp_path, "simclr", "real", 0, epochs=0, name="untrained")
    trained, _ = write_run(tmp_path, "simclr", "real", 0, name="trained")
    copied, _ = write_run(tmp_path, "simclr", "real", 0, epochs=0, name="copied")
    config = OmegaConf.load(copied / "config.yaml")
    OmegaConf.update(config, "init_from", str(trained / "checkpoints" / "last.ckpt"))
    OmegaConf.save(config, copied / "config.yaml")
    records = load_runs([untrained, trained, copied])
    assert [r.kind for r in records] == ["untrained", "trained", "trained"]
    assert not any("metrics.csv" in m for m in records[2].missing)  # no epochs, by design
    settings = group_settings(records)
    assert [s.label for s in settings if s.kind == "untrained"] == ["untrained"]
    assert [[r.name for r in s.runs] for s in settings] == [["untrained"], ["trained"],
                                                            ["copied"]]
    assert len({s.label for s in settings}) == 3
