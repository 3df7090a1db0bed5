"""The figure registry (repgeom.plots.registry): one entry per figure, each drawn by a function that exists, and
importable without a plotting library (the workflow reads it at parse time)."""
import subprocess
import sys

from repgeom.plots import FIGURE_LABELS, FIGURE_NAMES, FIGURE_TITLES
from repgeom.plots.registry import FIGURES, drawer


def test_every_figure_has_a_label_a_title_and_a_drawing_function():
    assert list(FIGURE_LABELS) == list(FIGURE_TITLES) == list(FIGURES) == list(FIGURE_NAMES)
    assert len(set(FIGURE_LABELS.values())) == len(FIGURE_NAMES), "labels tell the figures apart in the report"
    for name in FIGURE_NAMES:
        assert callable(drawer(name)), name


def test_the_registry_imports_no_plotting_or_table_library():
    code = ("import sys; from repgeom.plots import FIGURE_LABELS, FIGURE_NAMES; "
            "print(sorted(m for m in ('matplotlib', 'pandas', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
