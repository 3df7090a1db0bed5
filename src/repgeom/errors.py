"""One error contract for every entry point: each `python -m repgeom.<stage>`, `python -m repgeom.launch` and the
`repgeom` command (`repgeom run`, `repgeom audit`).

`InputError` is the base of every exception that stands for expected bad input: a file, key, row or setting at fault,
named in the message (`DatasetError`, `PromptSetError`, `StoreError`, `ModelLoadError`, `FinetuneError`, …). An entry
point runs under `run_main` (or the `entry_point` decorator), which

  * on an `InputError` writes ONE line `PROG: error: MESSAGE` to stderr and returns exit status 1;
  * lets any other exception propagate, so a bug (in repgeom, numpy, pandas, …) keeps its traceback in the log;
  * leaves argparse alone: a usage error still exits 2, argparse's convention.

Exit status, then: 0 done; 1 bad input, in one `error:` line (for `repgeom audit` also: findings, listed); 2 a usage
error (argparse's message); 75 (EX_TEMPFAIL) a run that stopped on a signal after saving what it did
(`repgeom.finetune` at a Slurm time limit: the same command resumes it); anything else is a bug's traceback, or for
`repgeom run` the wrapped command's own status.
Every `--*-json` option is read by `json_option`, so that bad JSON is such a line too.

Standard library only: the launcher and the lock module import it before torch is needed.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from repgeom.logs import configure_logging

__all__ = ["EXIT_INPUT_ERROR", "EXIT_STOPPED", "InputError", "entry_point", "json_option", "report_input_error", "run_main"]

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


def json_option(text: str, option: str, error: type[InputError] = InputError, kind: type = dict):
    """The value of a `--*-json` option (or another option that takes JSON): JSON text, or the path of a file holding
    it (`@FILE`, or the bare path where the text is not JSON). Text that is not JSON, a file that cannot be read, or
    a value that is not a `kind` (a JSON object by default) is an `error` (an `InputError`) naming the option."""
    source, stripped = option, text.strip()
    if text.startswith("@") or not _looks_like_json(stripped):
        path = Path(text[1:] if text.startswith("@") else text)
        if not text.startswith("@") and not path.is_file():
            raise error(f"{option}: {text!r} is neither JSON nor an existing JSON file")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise error(f"{option}: cannot read {str(path)!r}: {err}") from None
        source = f"{option} file {str(path)!r}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        shown = text if len(text) <= 200 else text[:197] + "..."
        raise error(f"{source} is not valid JSON ({err}): {shown!r}") from None
    if not isinstance(value, kind):
        expected = "object" if kind is dict else "array" if kind is list else kind.__name__
        raise error(f"{source} must be a JSON {expected}, not {type(value).__name__}")
    return value


def _looks_like_json(text: str) -> bool:
    return text[:1] in tuple('{["-0123456789') or text in ("true", "false", "null")
