"""Logging set-up shared by every ``python -m repgeom.<stage>`` entry point."""
from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
_installed: list[logging.Handler] = []


def configure_logging(log_file: str | None = None) -> None:
    """Send INFO records to the current stderr (and ``log_file``).

    When ``main()`` runs several times in one process (tests, notebooks), the handlers of the earlier
    call are replaced, since they may hold a stderr that is closed by now; other handlers stay.
    """
    root = logging.getLogger()
    for handler in _installed:
        root.removeHandler(handler)
        handler.close()
    _installed[:] = [logging.StreamHandler(sys.stderr)] + ([logging.FileHandler(log_file)] if log_file else [])
    formatter = logging.Formatter(LOG_FORMAT)
    for handler in _installed:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
