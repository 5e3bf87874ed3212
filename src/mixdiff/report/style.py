"""How a setting looks in every figure of a report: colour = method, marker and line style = data
mode, so that one reading of the legend serves all plots (with a single method, colour = data mode
too: one colour would leave the modes' bands and bars hard to tell apart). Methods and modes take
their colour and marker in sorted order of the names present (the registries that list them
import the training stack, which the report does not need)."""

from __future__ import annotations

from dataclasses import dataclass

from mixdiff.report.collect import UNTRAINED
from mixdiff.report.grouping import Setting
from mixdiff.runs import PIXELS

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f")  # matplotlib's tab10, red moved up for contrast
# (marker, line style, bar hatch) of each data mode
MODE_LOOKS = (("*", "-", ""), ("s", "--", "//"), ("o", "-.", ".."), ("^", ":", "xx"),
              ("D", (0, (5, 1)), "\\\\"), ("v", (0, (1, 3)), "++"), ("P", (0, (3, 2, 1, 2)), "oo"))


@dataclass(frozen=True)
class Style:
    colour: str
    marker: str
    linestyle: object  # a matplotlib line style
    hatch: str


# the references are grey in every figure: the untrained encoder and the raw pixels
REFERENCE_LOOKS = {UNTRAINED: Style("#8c8c8c", "X", ":", ""),
                   PIXELS: Style("#c4c4c4", "P", (0, (1, 1)), "..")}


def setting_styles(settings: list[Setting]) -> dict[str, Style]:
    """Style of each setting by its label. Settings that share a method and a mode (e.g. two
    learning rates) cannot be told apart that way: then each setting gets its own colour.
    References (untrained, pixels) are grey, whatever else is shown."""
    styles = {s.label: REFERENCE_LOOKS[s.kind] for s in settings if s.reference}
    settings = [s for s in settings if not s.reference]
    methods = sorted({s.method for s in settings})
    modes = sorted({s.mode for s in settings})
    pairs = [(s.method, s.mode) for s in settings]
    by_method = len(set(pairs)) == len(pairs)
    for i, s in enumerate(settings):
        marker, line, hatch = MODE_LOOKS[modes.index(s.mode) % len(MODE_LOOKS)]
        if not by_method:
            colour = PALETTE[i % len(PALETTE)]
        elif len(methods) == 1:
            colour = PALETTE[modes.index(s.mode) % len(PALETTE)]
        else:
            colour = PALETTE[methods.index(s.method) % len(PALETTE)]
        styles[s.label] = Style(colour, marker, line, hatch)
    return styles


def legend_title(settings: list[Setting]) -> str:
    """The legend's title, saying what colour and marker stand for (see setting_styles)."""
    trained = [s for s in settings if not s.reference]
    title = "method · data (colour and marker: data)" if len({s.method for s in trained}) <= 1 \
        else "method · data (colour · marker)"
    return title + ("\ngrey: references (not trained)" if len(trained) < len(settings) else "")
