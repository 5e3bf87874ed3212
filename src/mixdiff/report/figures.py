"""Matplotlib without a screen, and one way to save a figure."""

from __future__ import annotations

from pathlib import Path

from mixdiff.io import atomic_open


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on training or CI machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_legend(fig, columns: int = 1, **options):
    """One legend for the whole figure: every labelled artist of its panels, each label once, in
    drawing order (the panels share one style per setting), in up to `columns` columns."""
    entries: dict = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    return fig.legend(list(entries.values()), list(entries), frameon=False, fontsize=8.5,
                      ncol=max(1, min(columns, len(entries))), **options)


def save(fig, out: str | Path, command: str = "report") -> Path:
    """Lay out, write the PNG (creating its folder, atomically) and free the figure. The saved
    area is fitted to what was drawn, so legends placed outside the axes are not clipped. The PNG
    names the command that drew it (`drawn_by`), so that the command's next run knows it may
    replace it (mixdiff.outputs)."""
    out = Path(out)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    with atomic_open(out, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15,
                    metadata={SOFTWARE: f"{DRAWN_BY}{command}"})
    pyplot().close(fig)
    return out


SOFTWARE = "Software"  # the PNG text key that names what drew the figure
DRAWN_BY = "mixdiff "


def drawn_by(path: str | Path) -> str | None:
    """The mixdiff command that drew the PNG at `path` ("report", "data grid", "attention"), or
    None when it is not a figure of ours."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            software = getattr(image, "text", {}).get(SOFTWARE, "")
    except Exception:  # not an image at all (PIL raises many types)
        return None
    return software.removeprefix(DRAWN_BY) if software.startswith(DRAWN_BY) else None
