"""One error contract for every `python -m repgeom.<stage>` entry point (and `python -m repgeom.launch`).

`InputError` is the base of every exception that stands for expected bad input: a file, key, row or setting at fault,
named in the message (`DatasetError`, `PromptSetError`, `StoreError`, `ModelLoadError`, `FinetuneError`, …). An entry
point runs under `run_main` (or the `entry_point` decorator), which

  * on an `InputError` writes ONE line `PROG: error: MESSAGE` to stderr and returns exit status 1;
  * lets any other exception propagate, so a bug (in repgeom, numpy, pandas, …) keeps its traceback in the log;
  * leaves argparse alone: a usage error still exits 2, argparse's convention.

A run that stopped on a signal after saving what it did (`repgeom.finetune` on a Slurm time limit) exits 75
(EX_TEMPFAIL): not an error, and the same command resumes it.

Standard library only: the launcher and the lock module import it before torch is needed.
"""
from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from repgeom.logs import configure_logging

__all__ = ["EXIT_INPUT_ERROR", "EXIT_STOPPED", "InputError", "entry_point", "report_input_error", "run_main"]

EXIT_INPUT_ERROR = 1
EXIT_STOPPED = 75


class InputError(ValueError):
    """Expected bad input: a file, key, row or setting at fault, named in the message.

    A ValueError, so that callers (and tests) that catch ValueError keep working."""


def report_input_error(prog: str, err: BaseException) -> None:
    """Write `PROG: error: MESSAGE` once to stderr, and as an ERROR record to the other logging destinations (a
    `--log` file, pytest's caplog), but not a second time to stderr through `configure_logging`'s handler."""
    print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
    logger = logging.getLogger(prog)
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "error: %s", (err,), None)
    for handler in logging.getLogger().handlers:
        if getattr(handler, "stream", None) in (sys.stderr, sys.__stderr__):
            continue
        if record.levelno >= handler.level:
            handler.handle(record)


def run_main(main_function: Callable[[], int | None], prog: str) -> int:
    """Run an entry point's body: configure logging, call `main_function()`, and return its exit status (0 for None).

    A bad-input error (`InputError`) is reported in one line (`report_input_error`) and gives exit status 1; any
    other exception propagates with its traceback; `SystemExit` (argparse's usage errors: status 2) passes through."""
    configure_logging()
    try:
        status = main_function()
    except InputError as err:
        report_input_error(prog, err)
        return EXIT_INPUT_ERROR
    return 0 if status is None else status


F = TypeVar("F", bound=Callable[..., "int | None"])


def entry_point(prog: str) -> Callable[[F], F]:
    """Decorator form of `run_main` for `def main(argv=None) -> int`: `@entry_point("repgeom.extract")`."""
    def decorate(function: F) -> F:
        @functools.wraps(function)
        def main(*args, **kwargs) -> int:
            return run_main(lambda: function(*args, **kwargs), prog)
        return main  # type: ignore[return-value]
    return decorate
