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
