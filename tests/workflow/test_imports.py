"""Every Snakemake job parses the workflow again: what the parse imports must stay light."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


RULES = Path(__file__).resolve().parents[2] / "workflow" / "rules"
HEAVY = ["torch", "dadapy", "jax", "sklearn"]


def test_the_workflow_parse_imports_no_heavy_library():
    modules = sorted({m for smk in RULES.glob("*.smk")
                      for m in re.findall(r"^\s*from (repgeom[\w.]*) import", smk.read_text(), re.M)})
    assert "repgeom.workflow.resources" in modules and "repgeom.workflow.models" in modules
    code = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []

