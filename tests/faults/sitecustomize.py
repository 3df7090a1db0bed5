"""Test-only fault injection: a hard kill (SIGKILL, as by the OOM killer or a lost node) or another signal at a chosen
point of a run, and slow training steps (for Slurm's time limits).

Python imports `sitecustomize` at start-up from its path, so a process whose PYTHONPATH starts with this folder
(`helpers.sigkill_after`), and every process it starts (torchrun's ranks), runs this module. For each variable below
that is set, it patches the production code as its module is first imported (a process that never imports it loads
nothing more):

  REPGEOM_TEST_SIGKILL_AFTER_CHUNKS=N   the extraction dies once it has written N row chunks (marked done);
  REPGEOM_TEST_SIGKILL_AFTER_STEPS=N    the fine-tuning dies once it has done N optimizer steps, with their log rows
                                        and checkpoints (every rank, as step N + 1 begins).
  REPGEOM_TEST_SIGNAL=NAME              the signal sent instead of SIGKILL (USR1, TERM: the process carries on
                                        with what it does on that signal);
  REPGEOM_TEST_STEP_SECONDS=S           each optimizer step of the fine-tuning takes S seconds more.
"""
import functools
import importlib.abc
import importlib.util
import inspect
import os
import signal
import sys
import time

PREFIX = "REPGEOM_TEST_SIGKILL_AFTER_"
SIGNAL = getattr(signal, "SIG" + os.environ.get("REPGEOM_TEST_SIGNAL", "KILL"))


def die() -> None:
    os.kill(os.getpid(), SIGNAL)


def after_chunks(module, count: int) -> None:
    """`module` is repgeom.store.writing."""
    write_chunk = module.GroupWriter.write_chunk
    written = 0  # in this process

    @functools.wraps(write_chunk)
    def counted(self, *args, **kwargs):
        nonlocal written
        write_chunk(self, *args, **kwargs)
        written += 1
        if written == count:
            die()

    module.GroupWriter.write_chunk = counted


def after_steps(module, count: int) -> None:
    """`module` is repgeom.finetune.trainer; `_step` takes the 0-based step, i.e. the steps done before it."""
    take_step = module.FinetuneJob._step
    signature = inspect.signature(take_step)

    @functools.wraps(take_step)
    def checked(*args, **kwargs):
        if signature.bind(*args, **kwargs).arguments["step"] == count:
            die()
        return take_step(*args, **kwargs)

    module.FinetuneJob._step = checked


def slow_steps(module, seconds: float) -> None:
    """`module` is repgeom.finetune.trainer."""
    take_step = module.FinetuneJob._step

    @functools.wraps(take_step)
    def slowed(*args, **kwargs):
        time.sleep(seconds)
        return take_step(*args, **kwargs)

    module.FinetuneJob._step = slowed


# event -> (module, patch)
PATCHES = {"CHUNKS": ("repgeom.store.writing", after_chunks), "STEPS": ("repgeom.finetune.trainer", after_steps)}


class PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds `name` through the other finders, and patches the module right after it has run."""

    def __init__(self, name: str, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once: the module is imported once per process
        spec = importlib.util.find_spec(fullname)
        execute = spec.loader.exec_module

        def run_and_patch(module):
            execute(module)
            self.patch(module)

        spec.loader.exec_module = run_and_patch
        return spec


def install(environ) -> None:
    for variable, value in environ.items():
        if not variable.startswith(PREFIX):
            continue
        event = variable.removeprefix(PREFIX)
        if event not in PATCHES:  # a misspelt fault would otherwise be ignored
            raise KeyError(f"{variable}: no such fault; known: {', '.join(PREFIX + e for e in PATCHES)}")
        name, patch = PATCHES[event]
        sys.meta_path.insert(0, PatchOnImport(name, functools.partial(patch, count=int(value))))
    if environ.get("REPGEOM_TEST_STEP_SECONDS"):
        seconds = float(environ["REPGEOM_TEST_STEP_SECONDS"])
        sys.meta_path.insert(0, PatchOnImport("repgeom.finetune.trainer", functools.partial(slow_steps,
                                                                                          seconds=seconds)))


install(os.environ)
