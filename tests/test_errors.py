"""The one error contract of the entry points (`repgeom.errors`): bad input is one line and exit status 1, anything
else keeps its traceback, argparse's usage errors stay exit status 2."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from repgeom.errors import InputError, entry_point, run_main


def test_input_error_is_one_line_and_exit_1(capsys):
    def body():
        raise InputError("questions file 'q.parquet' does not exist")

    assert run_main(body, "repgeom.test") == 1
    err = capsys.readouterr().err
    assert err == "repgeom.test: error: questions file 'q.parquet' does not exist\n"


def test_input_error_reaches_the_other_log_destinations_once(capsys, caplog, tmp_path):
    """A `--log` file (and pytest's caplog) get the error as a record; stderr gets only the plain line."""
    from repgeom.logs import configure_logging

    def body():
        configure_logging(str(tmp_path / "run.log"))  # as `python -m repgeom.analysis --log FILE` does
        raise InputError("bad row 5")

    assert run_main(body, "repgeom.test") == 1
    assert capsys.readouterr().err == "repgeom.test: error: bad row 5\n"
    assert (tmp_path / "run.log").read_text().rstrip().endswith("repgeom.test ERROR error: bad row 5")
    assert [r.getMessage() for r in caplog.records if r.name == "repgeom.test"] == ["error: bad row 5"]


def test_a_subclass_is_reported_too_and_value_error_callers_still_catch_it(capsys):
    class Bad(InputError):
        pass

    def body():
        raise Bad("x")

    assert run_main(body, "p") == 1 and capsys.readouterr().err == "p: error: x\n"
    with pytest.raises(ValueError):
        body()


def test_other_exceptions_propagate_with_their_traceback(capsys):
    def body():
        raise ValueError("a bug, not bad input")

    with pytest.raises(ValueError, match="a bug") as info:
        run_main(body, "repgeom.test")
    assert info.traceback[-1].name == "body"  # the frame that raised it is kept
    assert "error:" not in capsys.readouterr().err


def test_status_and_usage_errors_pass_through(capsys):
    assert run_main(lambda: None, "p") == 0
    assert run_main(lambda: 3, "p") == 3

    @entry_point("repgeom.test")
    def main(argv=None) -> int:
        parser = argparse.ArgumentParser(prog="python -m repgeom.test")
        parser.add_argument("--n", type=int, required=True)
        args = parser.parse_args(argv)
        if args.n < 0:
            raise InputError(f"--n must be >= 0, not {args.n}")
        return 0

    assert main(["--n", "1"]) == 0
    assert main(["--n", "-1"]) == 1
    assert capsys.readouterr().err == "repgeom.test: error: --n must be >= 0, not -1\n"
    with pytest.raises(SystemExit) as usage:
        main(["--n", "x"])
    assert usage.value.code == 2
    assert main.__name__ == "main"


def test_a_bug_in_a_subprocess_keeps_its_traceback():
    code = ("from repgeom.errors import run_main\n"
            "def body():\n    import numpy as np\n    np.zeros(3).reshape(2, 2)\n"
            "import sys; sys.exit(run_main(body, 'repgeom.test'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1  # Python's own status for an uncaught exception
    assert "Traceback" in done.stderr and "reshape" in done.stderr and "repgeom.test: error:" not in done.stderr


def _input_error_classes():
    from repgeom.analysis.layer import AnalysisInputError
    from repgeom.data.facts import FactsPoolError, FactsTableError
    from repgeom.data.mmlu import DatasetError
    from repgeom.extract.hooks import UnsupportedArchitecture
    from repgeom.extract.job import PromptSetError
    from repgeom.finetune.params import FinetuneError
    from repgeom.finetune.trainer import FinetuneLocked
    from repgeom.launch import LaunchError
    from repgeom.locks import LockedError
    from repgeom.models.gguf import GgufImportError
    from repgeom.models.loading import ModelLoadError
    from repgeom.plots.inputs import InputError as FigureInputError
    from repgeom.provenance.records import RecordError
    from repgeom.store.layout import StoreError

    return [AnalysisInputError, DatasetError, FactsPoolError, FactsTableError, FinetuneError, FinetuneLocked,
            FigureInputError, GgufImportError, LaunchError, LockedError, ModelLoadError, PromptSetError, RecordError,
            StoreError, UnsupportedArchitecture]


@pytest.mark.parametrize("error", _input_error_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_bad_input_class_is_an_input_error(error):
    assert issubclass(error, InputError) and issubclass(error, ValueError)


@pytest.mark.parametrize("name", ["ModelLoadError", "StoreError", "UnsupportedArchitecture"])
def test_former_runtime_errors_still_are_runtime_errors(name):
    error = {c.__name__: c for c in _input_error_classes()}[name]
    assert issubclass(error, RuntimeError)


def test_internal_errors_are_not_input_errors():
    from repgeom.analysis.geometry import ClusteringError
    from repgeom.provenance.wrapper import JobError

    assert not issubclass(ClusteringError, InputError) and not issubclass(JobError, InputError)


@pytest.mark.parametrize("module", ["repgeom.data", "repgeom.models", "repgeom.extract", "repgeom.finetune",
                                    "repgeom.analysis", "repgeom.plots", "repgeom.launch"])
def test_every_entry_point_runs_under_the_wrapper(module):
    import importlib

    main = importlib.import_module(module if module == "repgeom.launch" else f"{module}.__main__").main
    assert getattr(main, "__wrapped__", None) is not None, f"{module}.main is not an @entry_point"


def test_launch_bad_gpu_count_is_one_line_and_exit_1(capsys, monkeypatch):
    from repgeom.launch import main

    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "two")
    assert main(["--print", "--", "true"]) == 1
    assert capsys.readouterr().err == "repgeom.launch: error: SLURM_GPUS_ON_NODE is not a number: 'two'\n"
