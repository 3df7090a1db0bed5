"""Fine-tuning throughput: this stage (`python -m repgeom.finetune`: a DeepSpeed ZeRO-2 engine, peft LoRA, logits only
where the answer letter is predicted) against a plain HF `Trainer` + peft run with the same model, data and
hyperparameters (LoRA rank 64, alpha 16, dropout 0.1 on q/k/v/o/gate/up/down; AdamW, lr 2e-4, no weight decay, no
clipping; 5% warm-up then cosine to 1%; effective batch 16), in one run.

  python benchmarks/finetune_throughput.py             # GPU: random Llama-3-8B shape, 4 layers, bf16; CPU: a small Llama
  python benchmarks/finetune_throughput.py --rows 128  # quicker
  python benchmarks/finetune_throughput.py --arms stage --layers 32 --compare-timer   # as benchmarks/gpu_check.sh
  python benchmarks/finetune_throughput.py --shape smollm2 --layers 30 --dtype bfloat16 --arms stage   # `repgeom plan`

Each arm runs in a process of its own (one rank), so that each has a fresh DeepSpeed process group and its own peak
memory. Reported per arm: training tokens/s (the real, unpadded tokens of every batch over the training loop's time,
from its first step to its last, with no checkpoint saving in the HF arm and the stage's adapter saves left out), the
rank's peak memory (GPU: most memory allocated; CPU: peak resident set), the median step time, and the last step's
loss. The models are built from a config: nothing is downloaded. `--arms stage` runs the stage alone (the HF arm needs
`datasets`); `--compare-timer` runs the stage again with DeepSpeed's throughput timer on (it synchronises the device
at every forward and step; the shipped configs turn it off). Writes benchmarks/results/finetune_throughput.json, with
what benchmarks/plan_constants.py needs to turn the stage's tokens/s into FLOP/s: the model's config, the dtype the
stage trained in, the padded length of every row of its micro-batches, the commit.
The latest numbers, with the machine and commit: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                 num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False)
SMALL_LLAMA = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_attention_heads=8,
                   num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False)
TINY_LLAMA = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=2048, tie_word_embeddings=False)  # the CPU dry run of gpu_check.sh
# The default run's model (config/config.yaml), for the CPU constants of `repgeom plan`: --layers 30 is all of it.
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True)
SHAPES = {"8b": LLAMA3_8B, "small": SMALL_LLAMA, "tiny": TINY_LLAMA, "smollm2": SMOLLM2_135M}
WORDS = ("cell membrane energy protein gene theory market price law court river mountain number prime field "
         "group ring algebra vector matrix temple ritual scripture empire treaty voltage current force mass").split()


def question_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """Fine-tuning rows in the data stage's format, with question lengths spread like MMLU's (20-120 words)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        question = " ".join(rng.choice(WORDS, size=int(rng.integers(20, 120)))).capitalize() + "?"
        choices = "".join(f"{letter}. {' '.join(rng.choice(WORDS, size=int(rng.integers(1, 8))))}\n"
                          for letter in "ABCD")
        prompt, gold = f"{question}\n{choices}Answer:", "ABCD"[int(rng.integers(4))]
        rows.append({"question_id": f"q{i}", "subject": "s", "gold": gold, "split": "validation", "prompt": prompt,
                     "text": f"{prompt} {gold}"})
    return pd.DataFrame(rows)


def model_config(shape: str, layers: int) -> dict:
    """The random model's shape, as transformers' config (and `Architecture.from_hf_config`) reads it."""
    return {**SHAPES[shape], "num_hidden_layers": layers}


def build_inputs(workdir: Path, rows: int, config: dict, on_gpu: bool, dtype: str | None) -> None:
    """A tokenizer trained on the rows, a random Llama (saved with save_pretrained) in `dtype` (default: bf16 on a
    GPU, float32 on the CPU), and the fine-tuning set. The model is made on the device it trains on (an 8B shape on
    the CPU would take minutes to initialise)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from repgeom.models.build import train_tokenizer

    frame = question_rows(rows)
    frame.to_parquet(workdir / "finetune_set.parquet")
    tokenizer = train_tokenizer(frame["text"].tolist() + [f"Answer: {x}" for x in "ABCD"], vocab_size=1024)
    config = LlamaConfig(**config, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu else "cpu"):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype) if dtype else default_model_dtype(on_gpu))
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")


def default_model_dtype(on_gpu: bool) -> torch.dtype:
    return torch.bfloat16 if on_gpu else torch.float32


def padded_lengths(workdir: Path, params: dict, context: int) -> list[int]:
    """The padded length of every row of the stage's forward passes over the run (one rank), in its order: the
    lengths its FLOP are counted over. The stage's own encoding (truncated to the model's context, as for LoRA) and
    the planner's replay of its batch plan."""
    from repgeom.costs.estimate import padded_passes
    from repgeom.finetune.data import encode_finetune_set
    from repgeom.finetune.params import parse_params
    from repgeom.models.loading import load_tokenizer

    encoded = encode_finetune_set(workdir / "finetune_set.parquet", load_tokenizer(str(workdir / "model")), context)
    return padded_passes(np.array([len(ids) for ids in encoded.input_ids]), parse_params(params), ranks=1)


def peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    # This process's own high-water mark: ru_maxrss would start at the peak of the driver that forked it.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024


def run_stage(workdir: Path, params: dict, dtype: str | None, deepspeed: str = "zero2") -> dict:
    """The stage in `dtype` (default: its own, `auto`)."""
    from repgeom.finetune.__main__ import main

    out = workdir / "stage_out"
    shutil.rmtree(out, ignore_errors=True)
    status = main(["--model", str(workdir / "model"), "--train", str(workdir / "finetune_set.parquet"),
                   "--out", str(out), "--params-json", json.dumps(params), "--deepspeed", deepspeed,
                   "--model-dtype", dtype or "auto"])
    if status:
        raise SystemExit(f"the fine-tuning stage failed with status {status}")
    with open(out / "train_log.csv", newline="") as handle:
        log = list(csv.DictReader(handle))
    steps = [float(r["step_time_s"]) for r in log]
    return {"tokens": sum(int(r["tokens"]) for r in log), "seconds": sum(steps), "steps": len(log),
            "median_step_s": float(np.median(steps[1:] or steps)),  # the first step carries one-time set-up
            "final_loss": float(log[-1]["loss"]), "peak_memory_bytes": peak_memory_bytes(),
            "threads": torch.get_num_threads()}


def run_stage_timer_on(workdir: Path, params: dict, dtype: str | None) -> dict:
    """The stage with DeepSpeed's throughput timer on (synchronised), as DeepSpeed's default has it."""
    from repgeom.shipped import deepspeed_config_path

    config = json.loads(deepspeed_config_path("zero2").read_text())
    config["timers"] = {"throughput": {"enabled": True, "synchronized": True}}
    path = workdir / "zero2_timer_on.json"
    path.write_text(json.dumps(config))
    return run_stage(workdir, params, dtype, str(path))


def run_hf_trainer(workdir: Path, params: dict, dtype: str | None) -> dict:
    """The same model, rows, LoRA and schedule through transformers' Trainer (loss over full-vocabulary logits)."""
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainerCallback,
                              TrainingArguments)

    from repgeom.finetune.data import IGNORE_INDEX, encode_finetune_set
    from repgeom.finetune.methods import resolve_target_modules
    from repgeom.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(workdir / "model"))
    encoded = encode_finetune_set(workdir / "finetune_set.parquet", tokenizer, max_tokens=None)
    data = Dataset.from_dict({"input_ids": encoded.input_ids,
                              "labels": [[IGNORE_INDEX] * (len(ids) - 1) + ids[-1:] for ids in encoded.input_ids]})
    on_gpu = torch.cuda.is_available()
    torch.manual_seed(params["seed"])
    model = AutoModelForCausalLM.from_pretrained(
        workdir / "model", dtype=getattr(torch, dtype) if dtype else default_model_dtype(on_gpu))
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=params["lora_r"],
                                             lora_alpha=params["lora_alpha"], lora_dropout=params["lora_dropout"],
                                             target_modules=resolve_target_modules(model, params["target_modules"])))
    accumulation = params["effective_batch"] // params["micro_batch"]
    args = TrainingArguments(
        output_dir=str(workdir / "hf_out"), per_device_train_batch_size=params["micro_batch"],
        gradient_accumulation_steps=accumulation, num_train_epochs=params["epochs"], learning_rate=params["lr"],
        weight_decay=0.0, max_grad_norm=0.0, optim="adamw_torch", lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": params["final_lr_fraction"]}, warmup_steps=params["warmup_fraction"],
        bf16=on_gpu, use_cpu=not on_gpu, save_strategy="no", logging_steps=1, report_to="none", seed=params["seed"],
        disable_tqdm=True)

    class LoopTimer(TrainerCallback):
        def on_train_begin(self, *_, **__):
            self.began = time.perf_counter()

        def on_train_end(self, *_, **__):
            if on_gpu:
                torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.began

    timer = LoopTimer()
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[timer],
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    tokens = sum(map(len, encoded.input_ids)) * params["epochs"]
    return {"tokens": tokens, "seconds": timer.seconds, "steps": trainer.state.global_step, "final_loss": losses[-1],
            "peak_memory_bytes": peak_memory_bytes()}


STAGE, HF, TIMER_ON = ("repgeom.finetune (DeepSpeed ZeRO-2 + peft)", "HF Trainer + peft",
                       "repgeom.finetune, DeepSpeed's throughput timer on")
ARMS = {STAGE: run_stage, HF: run_hf_trainer, TIMER_ON: run_stage_timer_on}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="fine-tuning rows (default: 1065 GPU, 256 CPU)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--layers", type=int, default=4, help="decoder blocks kept (GPU: of the 8B shape)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--shape", choices=list(SHAPES), help="model shape (default: 8b on a GPU, small on the CPU)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                        help="the model's dtype in every arm (default: the stage's own, bf16 on a GPU and on a CPU "
                             "with native bf16; the HF arm float32 on a CPU)")
    parser.add_argument("--arms", choices=("both", "stage"), default="both",
                        help="both (default): the stage and the HF Trainer; stage: the stage alone")
    parser.add_argument("--compare-timer", action="store_true",
                        help="also run the stage with DeepSpeed's throughput timer on")
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)  # one arm, in a child process
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "finetune_throughput.json"))
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available()
    from repgeom.finetune import default_params
    from repgeom.models.loading import parse_dtype
    from repgeom.provenance.records import short_commit

    params = {**default_params("8b"), "epochs": args.epochs, "micro_batch": args.micro_batch, "seed": 0}
    if args.arm:
        result = ARMS[args.arm](Path(args.workdir), params, args.dtype)
        (Path(args.workdir) / "result.json").write_text(json.dumps(result))
        return

    rows = args.rows or (1065 if on_gpu else 256)
    shape = args.shape or ("8b" if on_gpu else "small")
    config = model_config(shape, args.layers)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        build_inputs(Path(tmp), rows, config, on_gpu, args.dtype)
        padded = padded_lengths(Path(tmp), params, config["max_position_embeddings"])
        arms = [STAGE] + ([HF] if args.arms == "both" else []) + ([TIMER_ON] if args.compare_timer else [])
        for arm in arms:
            (Path(tmp) / "result.json").unlink(missing_ok=True)
            subprocess.run([sys.executable, __file__, "--arm", arm, "--workdir", tmp, "--rows", str(rows),
                            "--epochs", str(args.epochs), "--micro-batch", str(args.micro_batch)]
                           + (["--dtype", args.dtype] if args.dtype else []), check=True)
            results[arm] = json.loads((Path(tmp) / "result.json").read_text())
            results[arm]["tokens_per_s"] = results[arm]["tokens"] / results[arm]["seconds"]
    device = torch.cuda.get_device_name() if on_gpu else f"CPU ({platform.processor() or platform.machine()}, " \
                                                         f"{torch.get_num_threads()} threads)"
    print(f"\n{device}; random Llama ({shape} shape), {args.layers} layers, "
          f"{rows} rows x {args.epochs} epoch(s), micro-batch {args.micro_batch}, effective batch 16, one rank")
    print(f"{'arm':52s} {'tokens/s':>10s} {'steps':>6s} {'seconds':>8s} {'step s':>7s} {'peak MiB':>9s} {'last loss':>9s}")
    for arm, r in results.items():
        print(f"{arm:52s} {r['tokens_per_s']:10.0f} {r['steps']:6d} {r['seconds']:8.2f} "
              f"{r.get('median_step_s', float('nan')):7.3f} {r['peak_memory_bytes'] / 2**20:9.0f} {r['final_loss']:9.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    stage_dtype = parse_dtype(args.dtype or "auto", "cuda" if on_gpu else "cpu")  # as the stage resolves it
    report = {"device": device, "threads": results[STAGE]["threads"], "commit": short_commit(),
              "command": shlex.join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]), "shape": shape,
              "config": config, "dtype": str(stage_dtype).removeprefix("torch."), "rows": rows, "layers": args.layers,
              "epochs": args.epochs, "params": params, "padded_lengths": padded, "arms": results,
              "production": {"path": STAGE, "tokens": results[STAGE]["tokens"], "seconds": results[STAGE]["seconds"]}}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
