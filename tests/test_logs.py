"""Entry points called several times in one process log to the stderr of the latest call."""
from __future__ import annotations

import io
import logging
import sys

from repgeom.logs import configure_logging


def test_a_second_call_replaces_the_handler_bound_to_a_closed_stderr(monkeypatch, tmp_path):
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging()
    logging.getLogger("repgeom.test").info("one")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    configure_logging(str(tmp_path / "run.log"))
    logging.getLogger("repgeom.test").info("two")
    assert "repgeom.test INFO two" in second.getvalue()
    assert "Logging error" not in second.getvalue()
    assert (tmp_path / "run.log").read_text().rstrip().endswith("repgeom.test INFO two")
    root = logging.getLogger()
    assert sum(isinstance(h, logging.StreamHandler) and h.stream is first for h in root.handlers) == 0
