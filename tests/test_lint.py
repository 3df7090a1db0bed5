"""`snakemake --lint` reports nothing on the workflow, under the default config and the paper configs."""
from __future__ import annotations

import pytest
from helpers import ROOT, run_snakemake

pytestmark = pytest.mark.slow  # every test runs `snakemake --lint`

CONFIGS = [None, *sorted((ROOT / "config").glob("paper_*.yaml"))]


@pytest.mark.parametrize("configfile", CONFIGS, ids=lambda c: c.name if c else "default")
def test_lint_reports_nothing(configfile, tmp_path):
    args = ["--configfile", str(configfile)] if configfile else []
    result = run_snakemake("--lint", *args, workdir=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Lints for" not in output, output[-5000:]
    assert "Congratulations, your workflow is in a good condition!" in output
