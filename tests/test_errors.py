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


def _repgeom_modules() -> list:
    """Every module of repgeom except the `__main__` ones (importing those runs them)."""
    import importlib
    import pkgutil

    import repgeom

    return [importlib.import_module(info.name) for info in pkgutil.walk_packages(repgeom.__path__, "repgeom.")
            if not info.name.endswith("__main__")]


def _subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *_subclasses(direct)}}


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


MODULES = _repgeom_modules()
# Exceptions of repgeom that are no bad input: handled where they are raised, or a bug to keep its traceback.
# (TrainingStopped: a run that saved its state on a signal; its entry point exits 75.)
INTERNAL_ERRORS = {"repgeom.analysis.geometry.ClusteringError", "repgeom.plots.registry.NoData",
                   "repgeom.finetune.trainer.TrainingStopped"}


@pytest.mark.parametrize("error", sorted(_subclasses(InputError), key=_name), ids=_name)
def test_every_bad_input_class_is_an_input_error(error):
    """Walks InputError's subclasses (every repgeom module imported): each is a ValueError too, for callers that
    catch ValueError."""
    assert issubclass(error, ValueError)


def test_every_exception_repgeom_defines_is_an_input_error_or_named_internal():
    defined = {_name(value): value for module in MODULES for value in vars(module).values()
               if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module.__name__}
    assert "repgeom.workflow.models.ModelConfigError" in defined and "repgeom.conditions.ConditionError" in defined
    assert {name for name, error in defined.items() if not issubclass(error, InputError)} == INTERNAL_ERRORS


@pytest.mark.parametrize("name", ["ModelLoadError", "StoreError", "UnsupportedArchitecture"])
def test_former_runtime_errors_still_are_runtime_errors(name):
    error = {c.__name__: c for c in _subclasses(InputError)}[name]
    assert issubclass(error, RuntimeError)


@pytest.mark.parametrize("module", ["repgeom.data", "repgeom.models", "repgeom.extract", "repgeom.finetune",
                                    "repgeom.analysis", "repgeom.plots", "repgeom.launch"])
def test_every_entry_point_runs_under_the_wrapper(module):
    import importlib

    main = importlib.import_module(module if module == "repgeom.launch" else f"{module}.__main__").main
    assert getattr(main, "__wrapped__", None) is not None, f"{module}.main is not an @entry_point"


def test_the_repgeom_command_keeps_the_contract(tmp_path, capsys):
    """`repgeom run` and `repgeom audit` (the eighth entry point) run each subcommand under `run_main`: bad input is
    one `error:` line and exit 1, a usage error exits 2."""
    from repgeom.provenance.cli import main

    assert main(["run", "--meta", "{not json", "--", "true"]) == 1
    assert capsys.readouterr().err.startswith("repgeom run: error: --meta is not valid JSON (")
    assert main(["audit", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err == f"repgeom audit: error: results folder {tmp_path / 'nowhere'} does not exist\n"
    assert main(["nope"]) == 2 and "repgeom: error: unknown command 'nope'" in capsys.readouterr().err


BAD_JSON = "{not: json"
# Each entry point's command with a `--*-json` option (or --meta) given bad JSON, everything else as the workflow
# gives it (paths that need not exist: the option is read first).
JSON_OPTIONS = {
    "data generate --params-json": ("repgeom.data.__main__", "repgeom.data",
                                    ["generate", "--out", "o", "--params-json", BAD_JSON]),
    "data sample --dataset-json": ("repgeom.data.__main__", "repgeom.data",
                                   ["sample", "--dataset-json", BAD_JSON, "--max-per-subject", "1",
                                    "--finetune-max-per-subject", "1", "--seed", "0", "--questions-out", "q",
                                    "--subset-out", "s", "--finetune-out", "f"]),
    "models build --params-json": ("repgeom.models.__main__", "repgeom.models",
                                   ["build", "--corpus", "c.json", "--params-json", BAD_JSON, "--out", "m",
                                    "--log-out", "l"]),
    "models import --source-json": ("repgeom.models.__main__", "repgeom.models",
                                    ["import", "--source-json", BAD_JSON, "--out", "m"]),
    "finetune --params-json": ("repgeom.finetune.__main__", "repgeom.finetune",
                               ["--model", "m", "--train", "t", "--out", "o", "--params-json", BAD_JSON,
                                "--deepspeed", "zero2"]),
    "analysis layers --params-json": ("repgeom.analysis.__main__", "repgeom.analysis",
                                      ["layers", "--store", "s", "--group", "m/c", "--layers", "0", "--params-json",
                                       BAD_JSON, "--out", "o", "--neighbors-out", "n"]),
    "plots figures --settings-json": ("repgeom.plots.__main__", "repgeom.plots",
                                      ["figures", "--metrics", "m", "--lens", "l", "--overlap", "o", "--accuracy",
                                       "a", "--model", "m", "--settings-json", BAD_JSON, "--out-dir", "d"]),
    "plots compare-models --settings-json": ("repgeom.plots.__main__", "repgeom.plots",
                                             ["compare-models", "--metrics", "m", "--lens", "l", "--models", "a",
                                              "--conditions", "0shot", "--settings-json", BAD_JSON, "--out-dir", "d"]),
    "repgeom run --meta": ("repgeom.provenance.cli", "repgeom run", ["run", "--meta", BAD_JSON, "--", "true"]),
}


@pytest.mark.parametrize("case", list(JSON_OPTIONS))
def test_bad_json_in_any_option_is_one_line_and_exit_1(case, tmp_path, monkeypatch, capsys):
    """Every `--*-json` option is read by `errors.json_option`: bad JSON is the same one line everywhere."""
    import importlib

    module, prog, argv = JSON_OPTIONS[case]
    option = case.split()[-1]
    monkeypatch.chdir(tmp_path)
    assert importlib.import_module(module).main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: {option} is not valid JSON (") and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("text, value", [('{"a": 1}', {"a": 1}), ("@FILE", {"b": [2]}), ("FILE", {"b": [2]})])
def test_json_option_reads_json_or_a_file(tmp_path, text, value):
    from repgeom.errors import json_option

    (tmp_path / "v.json").write_text('{"b": [2]}')
    assert json_option(text.replace("FILE", str(tmp_path / "v.json")), "--x-json") == value


@pytest.mark.parametrize("text, message", [
    ("{a: 1}", "--x-json is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
               "(char 1)): '{a: 1}'"),
    ("[1]", "--x-json must be a JSON object, not list"),
    ("missing.json", "--x-json: 'missing.json' is neither JSON nor an existing JSON file"),
    ("@missing.json", "--x-json: cannot read 'missing.json': [Errno 2] No such file or directory: 'missing.json'"),
])
def test_json_option_errors_name_the_option(tmp_path, monkeypatch, text, message):
    from repgeom.errors import json_option
    from repgeom.finetune.params import FinetuneError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as caught:
        json_option(text, "--x-json")
    assert str(caught.value) == message
    with pytest.raises(FinetuneError):
        json_option(text, "--x-json", FinetuneError)


def test_launch_bad_gpu_count_is_one_line_and_exit_1(capsys, monkeypatch):
    from repgeom.launch import main

    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "two")
    assert main(["--print", "--", "true"]) == 1
    assert capsys.readouterr().err == "repgeom.launch: error: SLURM_GPUS_ON_NODE is not a number: 'two'\n"
