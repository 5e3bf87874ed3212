"""The twin filter's rule: by similarity, by class kept, and one line for a file that is not a
scores file or a twin it has no row for."""

import os

import pytest

from mixdiff.data.twin_scores import TwinFilter
from mixdiff.errors import DatasetError, UnsafePathError


def _scores(tmp_path, rows):
    path = tmp_path / "scores.csv"
    path.write_text("twin,real,root,class_kept,similarity\n" + "".join(
        f"{twin},r,{tmp_path},{kept},{similarity}\n" for twin, kept, similarity in rows))
    return path


def test_a_twin_without_a_row_is_named(tmp_path):
    """Rows name twins as `data verify` was given them; they resolve from where the run starts,
    as data.synthetic does. A twin the file does not score is an error, not a silent keep."""
    path = _scores(tmp_path, [(str(tmp_path / "a.jpg"), 1, 0.9)])
    assert TwinFilter.read(path, 0.5, False).keeps(str(tmp_path / "a.jpg"))
    with pytest.raises(DatasetError, match="elsewhere.jpg has no row in"):
        TwinFilter.read(path, 0.5, False).keeps("elsewhere.jpg")


def test_the_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _scores(tmp_path, [("a.jpg", 1, 0.9), ("b.jpg", 0, 0.9), ("c.jpg", 1, 0.2)])
    for minimum, class_kept, kept in ((0.5, False, [True, True, False]),
                                      (None, True, [True, False, True]),
                                      (0.5, True, [True, False, False])):
        rule = TwinFilter.read(path, minimum, class_kept)
        assert [rule.keeps(n) for n in ("a.jpg", "b.jpg", "c.jpg")] == kept
        assert rule.dropped == kept.count(False)
    (tmp_path / "other.csv").write_text("path,score\nx,1\n")
    with pytest.raises(DatasetError, match="not a twin scores file"):
        TwinFilter.read(tmp_path / "other.csv", 0.5, False)
    with pytest.raises(DatasetError, match="not found"):
        TwinFilter.read(tmp_path / "none.csv", 0.5, False)


def test_a_twin_outside_its_root_is_refused(tmp_path):
    """A scores row is a twin of its synthetic root: a path that leads out of it (`..`, another
    folder, a link to elsewhere) is refused in one line naming the file and the line."""
    root = tmp_path / "syn" / "v0"
    (root / "circle").mkdir(parents=True)
    (tmp_path / "elsewhere.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere.jpg", root / "circle" / "link.jpg")
    for twin in (f"{root}/../../elsewhere.jpg", str(tmp_path / "elsewhere.jpg"),
                 str(root / "circle" / "link.jpg")):
        path = tmp_path / "scores.csv"
        path.write_text("twin,real,root,class_kept,similarity\n"
                        f"{root}/circle/a.jpg,r,{root},1,0.9\n{twin},r,{root},1,0.9\n")
        with pytest.raises(UnsafePathError, match=f"scores.csv, line 3: the path .* leads "
                                                  f"outside {root}") as refused:
            TwinFilter.read(path, 0.5, False)
        assert "\n" not in str(refused.value)


@pytest.mark.parametrize("similarity, kept, said", [
    ("nan", 1, "similarity 'nan' is not a finite number"),
    ("inf", 1, "similarity 'inf' is not a finite number"),
    ("high", 1, "similarity 'high' is not a finite number"),
    ("0.9", "yes", "class_kept 'yes' is neither 1 nor 0")])
def test_a_row_that_is_not_a_score_is_named(tmp_path, monkeypatch, similarity, kept, said):
    """SC4: a NaN similarity was taken, and NaN >= any threshold is False: the twin dropped by
    accident, unseen (and with no threshold, kept)."""
    monkeypatch.chdir(tmp_path)
    path = _scores(tmp_path, [("a.jpg", 1, 0.9), ("b.jpg", kept, similarity)])
    with pytest.raises(DatasetError, match=f"scores.csv, line 3: {said}; the file is damaged: "
                                           "write it again with `mixdiff data verify"):
        TwinFilter.read(path, 0.5, False)
    path.write_text(path.read_text() + "c.jpg,r\n")  # cut short
    path.write_text(path.read_text().replace(f"b.jpg,r,{tmp_path},{kept},{similarity}\n", ""))
    with pytest.raises(DatasetError, match="scores.csv, line 3: a row cut short"):
        TwinFilter.read(path, 0.5, False)
