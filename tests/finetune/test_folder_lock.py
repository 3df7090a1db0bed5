"""One trainer per output folder: a run whose folder is locked by a live process (a job left running by a killed
Snakemake) stops at once, naming that process, before it reads or writes anything in the folder."""
import json
import signal
import subprocess
import sys

from repgeom.finetune.__main__ import main
from repgeom.finetune.params import FinetuneError
from repgeom.finetune.trainer import FinetuneJob, FinetuneLocked
from repgeom.locks import LockedError

HOLD = """
import sys, time
from repgeom.locks import rank_locks
with rank_locks(sys.argv[1], "training folder", 0, 1):
    print("held", flush=True)
    time.sleep(600)
"""


def test_training_on_a_locked_folder_stops_before_writing(tiny_llama_dir, finetune_set, tmp_path, deepspeed_configs,
                                                          capsys):
    out = tmp_path / "lora"
    args = ["--model", str(tiny_llama_dir), "--train", str(finetune_set), "--out", str(out),
            "--params-json", json.dumps({"micro_batch": 2}), "--deepspeed", str(deepspeed_configs["zero2"])]
    base = FinetuneJob(model=str(tiny_llama_dir), train=finetune_set, out=out, params=None,
                       deepspeed_config=deepspeed_configs["zero2"]).lock_base
    assert base.parent == tmp_path  # beside the folder, which a restart may delete
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(base)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"repgeom.finetune: error: training folder '{out}' is in use by process {child.pid} "
                              "on host ")
        assert f"kill {child.pid}" in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert issubclass(FinetuneLocked, FinetuneError) and issubclass(FinetuneLocked, LockedError)
