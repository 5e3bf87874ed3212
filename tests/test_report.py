from PIL import Image
from typer.testing import CliRunner

from conftest import make_tree
from mixdiff.cli import app


def test_pairs_grid_shows_real_beside_each_variant(tmp_path):
    real = make_tree(tmp_path / "real", per_class=3)
    v0 = make_tree(tmp_path / "v0", per_class=3, ext=".jpg", seed=1)
    v1 = make_tree(tmp_path / "v1", per_class=2, seed=2)  # one twin per class missing
    result = CliRunner().invoke(app, ["data", "grid", "--real", str(real), "--synthetic", str(v0),
                                      "--synthetic", str(v1), "--out", str(tmp_path / "g.png"),
                                      "--rows", "4"])
    assert result.exit_code == 0, result.output
    width, height = Image.open(tmp_path / "g.png").size
    assert width < height < 2 * width  # 4 rows of 3 columns


def test_curves_plot_and_bad_run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,train/loss,online_knn/val_top1\n0,5.0,0.5\n1,4.0,\n")
    runner = CliRunner()
    result = runner.invoke(app, ["report", "curves", str(run), "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "c.png").size[0] > 0
    bad = runner.invoke(app, ["report", "curves", str(tmp_path), "--out", str(tmp_path / "d.png")])
    assert bad.exit_code == 2 and "metrics.csv" in bad.output
