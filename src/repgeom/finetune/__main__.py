"""`python -m repgeom.finetune`: fine-tune one adapter (LoRA, prompt tuning, prefix tuning or a prefix subspace) on
the fine-tuning set, saving peft adapters at log-spaced steps and epoch ends.

Launch as a single process, or as several ranks with `torchrun --nproc_per_node N -m repgeom.finetune ...`, the
DeepSpeed launcher, or srun (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, with MASTER_ADDR/MASTER_PORT exported).
Run the same command again to resume a killed run; after a complete run it does nothing. On SIGUSR1 or SIGTERM (a
Slurm time limit, its warning, a preemption) the run saves its state after the current step and exits with status
75; the same command resumes it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from repgeom.errors import EXIT_STOPPED, entry_point, json_option
from repgeom.finetune.params import FinetuneError, parse_params
from repgeom.finetune.trainer import FinetuneJob, TrainingStopped
from repgeom.models.loading import check_model_folder
from repgeom.shipped import deepspeed_config_arg


def _positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected minutes > 0, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m repgeom.finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="hub id or local save_pretrained folder")
    parser.add_argument("--revision", help="hub revision of --model")
    parser.add_argument("--train", required=True, help="fine-tuning set parquet written by the data stage")
    parser.add_argument("--out", required=True, help="output folder (adapters, log, resumable state)")
    parser.add_argument("--params-json", required=True,
                        help='hyperparameters as a JSON object, e.g. \'{"method": "lora", "lr": 2e-4}\'; '
                             "missing keys take the 8B reference values")
    parser.add_argument("--deepspeed", required=True, type=deepspeed_config_arg, help="a shipped DeepSpeed config (zero2, zero3) or a JSON file")
    parser.add_argument("--model-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="auto: bfloat16 on a GPU and on a CPU with native bf16, else float32")
    parser.add_argument("--wait-for-lock", action="store_true", help="if another live process writes the same output, wait for it to finish (default: stop, naming it)")
    parser.add_argument("--restart-if-changed", action="store_true",
                        help="if --out holds a run of different settings, delete it and start over (the workflow's "
                             "choice when a hyperparameter changed); by default that is an error")
    parser.add_argument("--state-every-minutes", type=_positive_minutes, default=30.0,
                        help="save the training state this often besides the adapter checkpoints (default 30)")
    # The DeepSpeed launcher passes --local_rank; the rank is read from the environment either way.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


@entry_point("repgeom.finetune")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = parse_params(json_option(args.params_json, "--params-json", FinetuneError))
    # A local --model folder must hold a config, a tokenizer and weights: say so (and what it holds) up front,
    # rather than as whichever transformers error the first loader happens to raise.
    check_model_folder(args.model)
    job = FinetuneJob(model=args.model, train=Path(args.train), out=Path(args.out), params=params,
                      deepspeed_config=args.deepspeed, model_dtype=args.model_dtype, revision=args.revision,
                      restart_if_changed=args.restart_if_changed, wait_for_lock=args.wait_for_lock,
                      state_every_minutes=args.state_every_minutes)
    try:
        job.run()
    except TrainingStopped as stopped:
        print(f"repgeom.finetune: {stopped}", file=sys.stderr, flush=True)
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
