"""The training run: DeepSpeed (ZeRO-2 or ZeRO-3) takes the optimizer steps, peft holds the adapter, and the plan in
`plan.py` says which rows each rank trains on at each step, so that any number of ranks and a resumed run replay
the same sequence of global batches.

Output folder:
  train_config.json          what the run is (params, model, data hash, ranks, DeepSpeed config) and its sha256
  train_log.csv              one row per optimizer step: loss, learning rate, rows, tokens, seconds
  checkpoints/{name}/        peft adapters (save_pretrained), name = step{N} | epoch{E}
  attempts.jsonl             one line per process that trained and ended by itself: the step it resumed after,
                             its last step, and the signal that stopped it (null: it finished the run)
  checkpoints.json           {name: optimizer step} of every adapter, written last: the run is complete
  train_state/               while running: the latest DeepSpeed state, per-rank RNG states, resume.json

Besides the adapter checkpoints, the training state is saved every `state_every_minutes`, and when the process gets
SIGUSR1 (Slurm's warning before a time limit, which profiles/slurm asks for) or SIGTERM (the limit itself, a
preemption, `scontrol requeue`): the ranks agree after each step, save, and stop with `TrainingStopped` (exit status
75). Running the same command again resumes after the saved step, with nothing lost and nothing redone.

While it runs, each rank holds an exclusive lock (`repgeom.locks`) on the file `.{folder}.lock.rank{r}` beside the
output folder (beside, so that starting over can delete the folder without dropping the lock): a second run on the
same folder, say one started while a killed workflow's job is still alive, stops at once naming that process.
"""
from __future__ import annotations

import csv
import datetime
import hashlib
import json
import logging
import shutil
import signal
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from repgeom.distributed import RankInfo, init_process_group, rank_device, rank_info_from_env
from repgeom.finetune.data import collate, encode_finetune_set, letter_losses
from repgeom.finetune.methods import prefix_subspace, save_adapter, trainable_model, virtual_tokens_in_sequence
from repgeom.finetune.params import PROMPT_LEARNING_METHODS, FinetuneError, FinetuneParams
from repgeom.finetune.plan import (accumulation_steps, checkpoint_steps, learning_rate, mixing_weights, rank_passes,
                                   step_rows, steps_per_epoch, total_steps)
from repgeom.io import atomic_path, write_json
from repgeom.locks import LockedError, rank_locks
from repgeom.models.loading import load_model, load_tokenizer, parse_dtype
from repgeom.shipped import read_deepspeed_config

log = logging.getLogger("repgeom.finetune")

# The batch sizes DeepSpeed needs, filled from the params at launch.
BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
# Ranks meet at every step; one waiting for another's checkpoint write should not time out.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=2)
# Slurm's warning before a time limit, and the limit (or a preemption, a requeue, scancel) itself.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class TrainingStopped(Exception):
    """The run saved its state after a step and stopped on a signal; the same command resumes it."""


class StopRequests:
    """While active, SIGUSR1 and SIGTERM are recorded instead of ending the process (main thread only; elsewhere,
    as in a test's worker thread, the signals keep their handlers)."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _record(self, signum, frame) -> None:
        self.received = signum
        log.warning("got %s: stopping after this step, once the state is saved", signal.Signals(signum).name)

    def __enter__(self) -> "StopRequests":
        try:
            self._previous = {sig: signal.signal(sig, self._record) for sig in STOP_SIGNALS}
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _find_auto(value, path: str = "") -> list[str]:
    if value == "auto":
        return [path]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _find_auto(item, f"{path}.{key}" if path else key)]
    return []


def deepspeed_config(path: str | Path, params: FinetuneParams, world_size: int, dtype: torch.dtype) -> dict:
    """The JSON file with the batch sizes and precision filled in for this launch; no `auto` is left."""
    config = read_deepspeed_config(path, FinetuneError)
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise FinetuneError(f"DeepSpeed config {str(path)!r} has an {section!r} section: the optimizer (AdamW) "
                                "and the schedule come from the fine-tuning params; remove it")
    batch = dict(zip(BATCH_KEYS, (params.effective_batch, params.micro_batch, accumulation_steps(params, world_size))))
    for key, value in batch.items():
        if config.get(key, "auto") not in ("auto", value):
            raise FinetuneError(f"DeepSpeed config {str(path)!r} sets {key} = {config[key]!r}, but the params and "
                                f"{world_size} rank(s) give {value}; remove the key (it is filled in at launch)")
    config.update(batch)
    if dtype == torch.float16:
        raise FinetuneError("float16 training needs loss scaling: use --model-dtype bfloat16 (or float32)")
    config["bf16"] = {**config.get("bf16", {}), "enabled": dtype == torch.bfloat16}
    config["fp16"] = {**config.get("fp16", {}), "enabled": False}
    left = _find_auto(config)
    if left:
        raise FinetuneError(f"DeepSpeed config {str(path)!r} has 'auto' at {', '.join(left)}: only the batch sizes "
                            "are filled in at launch; give explicit values")
    return config


def config_sha256(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


def run_differences(stored: dict, current: dict) -> list[str]:
    """`key: old -> new` for each setting where a stored run config differs from this one."""
    if stored.get("sha256") == current["sha256"]:
        return []
    old, new = _flatten(stored.get("config", {})), _flatten(current["config"])
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)] or ["unknown"]


def check_same_run(stored: dict, current: dict, where: str) -> None:
    """A state or output folder of another run must not be continued: name what differs."""
    differ = run_differences(stored, current)
    if not differ:
        return
    raise FinetuneError(f"{where} was written by a different training config ({'; '.join(differ)}); "
                        "use another --out folder or delete this one to start over")


class FinetuneLocked(FinetuneError, LockedError):
    """Another live process trains into the same output folder."""


@dataclass
class FinetuneJob:
    model: str
    train: Path
    out: Path
    params: FinetuneParams
    deepspeed_config: Path
    model_dtype: str = "auto"
    revision: str | None = None
    restart_if_changed: bool = False
    wait_for_lock: bool = False   # wait for another process training into the folder, instead of stopping
    state_every_minutes: float = 30.0
    _stop: StopRequests = field(default_factory=StopRequests, init=False, repr=False)

    @property
    def state_dir(self) -> Path:
        return self.out / "train_state"

    @property
    def log_path(self) -> Path:
        return self.out / "train_log.csv"

    @property
    def lock_base(self) -> Path:
        return self.out.parent / f".{self.out.name}.lock"

    def run(self) -> None:
        info = rank_info_from_env()
        with ExitStack() as stack:
            try:
                stack.enter_context(rank_locks(self.lock_base, f"training folder {str(self.out)!r}", info.rank,
                                               info.world_size, wait=self.wait_for_lock))
            except LockedError as err:
                raise FinetuneLocked(str(err)) from None
            self._stop = stack.enter_context(StopRequests())
            self._run(info)

    def _run(self, info: RankInfo) -> None:
        device = rank_device(info)
        dtype = parse_dtype(self.model_dtype, device)
        params = self.params
        tokenizer = load_tokenizer(self.model, self.revision)
        encoded = encode_finetune_set(self.train, tokenizer, self._max_tokens())
        n_steps = total_steps(len(encoded), params)
        ds_config = deepspeed_config(self.deepspeed_config, params, info.world_size, dtype)
        identity = json.loads(json.dumps({  # as it reads back from JSON (tuples become lists)
            "params": params.as_dict(), "model": self.model, "revision": self.revision, "train_sha256": encoded.sha256,
            "world_size": info.world_size, "dtype": str(dtype), "deepspeed": ds_config}))
        run_config = {"config": identity, "sha256": config_sha256(identity)}
        config_file = self.out / "train_config.json"
        stored = json.loads(config_file.read_text()) if config_file.is_file() else None
        if stored is not None and self.restart_if_changed and run_differences(stored, run_config):
            # The workflow re-runs the job because its settings changed: the old run is outdated, not resumable.
            log.warning("%s holds a run of another training config (%s): starting over", self.out,
                        "; ".join(run_differences(stored, run_config)))
            if info.is_main:
                shutil.rmtree(self.out)
                self.out.mkdir(parents=True)
        elif stored is not None:
            check_same_run(stored, run_config, f"output folder {str(self.out)!r}")
            if (self.out / "checkpoints.json").is_file():
                log.info("%s is complete (checkpoints.json); nothing to do", self.out)
                return
        log.info("rank %d/%d: %d rows, %d steps of %d rows (%d per micro-batch x %d accumulation x %d ranks), %s on %s",
                 info.rank, info.world_size, len(encoded), n_steps, params.effective_batch, params.micro_batch,
                 ds_config["gradient_accumulation_steps"], info.world_size, dtype, device)
        # DeepSpeed's group even on one rank (its engine needs one), with the fine-tuning's own timeout.
        init_process_group(info, zero3=ds_config.get("zero_optimization", {}).get("stage") == 3, device=device,
                           deepspeed=True, timeout=PROCESS_GROUP_TIMEOUT)
        if info.is_main and not config_file.is_file():
            write_json(run_config, config_file)
        dist.barrier()
        self._train(info, device, dtype, encoded, tokenizer.pad_token_id, ds_config, run_config, n_steps)

    def _max_tokens(self) -> int | None:
        from transformers import AutoConfig

        context = getattr(AutoConfig.from_pretrained(self.model, revision=self.revision).get_text_config(),
                          "max_position_embeddings", None)
        virtual = self.params.num_virtual_tokens if self.params.method in PROMPT_LEARNING_METHODS else 0
        return None if context is None else context - virtual

    def _train(self, info: RankInfo, device, dtype, encoded, pad_id: int, ds_config: dict, run_config: dict,
               n_steps: int) -> None:
        zero3 = ds_config.get("zero_optimization", {}).get("stage") == 3
        engine = self._engine(device, dtype, ds_config, n_steps, zero3)
        start = self._resume(engine, info, run_config)
        self._trim_log(info, start)
        saves = checkpoint_steps(len(encoded), self.params)
        per_epoch = steps_per_epoch(len(encoded), self.params.effective_batch)
        saved, saved_at = start, time.monotonic()
        for step in range(start + 1, n_steps + 1):  # 1-based: optimizer steps done once this one is
            stop, due = self._agree_on_stop(device, saved_at)
            if (stop or due) and step - 1 > saved:
                self._save(engine, info, [], step - 1, run_config, zero3)
                saved, saved_at = step - 1, time.monotonic()
            if stop:
                name = signal.Signals(stop).name
                self._record_attempt(info, start, saved, name)
                raise TrainingStopped(f"stopped by {name} after step {saved} of {n_steps}, its state saved in "
                                      f"{self.state_dir}: run the same command to resume")
            record = {"step": step, "epoch": (step - 1) // per_epoch + 1,
                      **self._step(engine, info, device, encoded, pad_id, step - 1, ds_config)}
            self._log_step(info, record)
            names = [name for name, at in saves.items() if at == step]
            if names:
                self._save(engine, info, names, step, run_config, zero3)
                saved, saved_at = step, time.monotonic()
        self._record_attempt(info, start, n_steps, None)
        if info.is_main:
            write_json(saves, self.out / "checkpoints.json")
            shutil.rmtree(self.state_dir, ignore_errors=True)  # only a killed run needs it
        dist.barrier()

    def _record_attempt(self, info: RankInfo, resumed_after: int, last_step: int, stopped_by: str | None) -> None:
        """A line of attempts.jsonl: what this process trained (a Slurm job's retries and requeues, each its own)."""
        if info.is_main:
            with open(self.out / "attempts.jsonl", "a") as handle:
                handle.write(json.dumps({"resumed_after": resumed_after, "last_step": last_step,
                                         "stopped_by": stopped_by}) + "\n")

    def _agree_on_stop(self, device, saved_at: float) -> tuple[int, bool]:
        """(the stop signal any rank got, or 0; whether any rank's state is `state_every_minutes` old): every rank
        gets the same answer, so all of them save the same step and stop together."""
        due = time.monotonic() - saved_at >= self.state_every_minutes * 60
        flags = torch.tensor([self._stop.received or 0, int(due)], dtype=torch.int64, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return int(flags[0]), bool(flags[1])

    def _engine(self, device, dtype, ds_config: dict, n_steps: int, zero3: bool):
        """The peft model in a DeepSpeed engine with AdamW (no weight decay) and the warm-up + cosine schedule."""
        import deepspeed

        params = self.params
        if zero3:
            from transformers.integrations import HfDeepSpeedConfig

            # While this object lives, from_pretrained loads each rank's partition only (deepspeed.zero.Init).
            zero3_loading = HfDeepSpeedConfig(ds_config)  # noqa: F841
        torch.manual_seed(params.seed)  # the adapter's initial weights, identical on every rank
        model = trainable_model(load_model(self.model, device=device, dtype=str(dtype).removeprefix("torch."),
                                           revision=self.revision), params)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=params.lr,
                                      weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(s, n_steps, params) / params.lr)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
        return engine

    def _step(self, engine, info: RankInfo, device, encoded, pad_id: int, step: int, ds_config: dict) -> dict:
        """One optimizer step (0-based `step`) over this rank's micro-batches; the log values of all ranks."""
        params = self.params
        began = time.perf_counter()
        lr = engine.get_lr()[0]
        subspace = prefix_subspace(engine.module)
        weights = mixing_weights(len(encoded), params, step) if subspace is not None else None
        rows = step_rows(len(encoded), params, step)
        # Row losses are summed and scaled so that DeepSpeed's mean over micro-steps and ranks is their mean over
        # the global batch, also when the last batch of an epoch is short.
        scale = ds_config["gradient_accumulation_steps"] * info.world_size / len(rows)
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # summed loss, rows, tokens
        lengths = encoded.lengths
        shortest = rows[np.argmin(lengths[rows])]
        micro_steps = rank_passes(rows, lengths, params, info.world_size, info.rank)
        for number, passes in enumerate(micro_steps, 1):
            for index, rows_of_pass in enumerate(passes):  # their gradients add up before the optimizer's step
                # The step's last pass alone is DeepSpeed's accumulation boundary: ZeRO-2 would otherwise overwrite,
                # not add to, the gradients of the boundary micro-step's earlier passes (tests/finetune).
                engine.set_gradient_accumulation_boundary(number == len(micro_steps) and index == len(passes) - 1)
                totals += self._forward_backward(engine, device, encoded, pad_id, rows_of_pass, shortest, scale,
                                                 subspace, weights, penalty=index == 0)
        engine.step()
        dist.all_reduce(totals)
        loss_sum, n_rows, n_tokens = totals.tolist()
        record = {"loss": loss_sum / n_rows, "lr": lr, "rows": int(n_rows), "tokens": int(n_tokens),
                  "step_time_s": time.perf_counter() - began}
        if subspace is not None:
            record["cos_penalty"] = subspace.cos_penalty.item()
        return record

    def _forward_backward(self, engine, device, encoded, pad_id: int, rows: np.ndarray, shortest: int, scale: float,
                          subspace, weights, penalty: bool) -> torch.Tensor:
        """One forward and backward pass over `rows`; its summed loss, rows and tokens. An empty pass still runs (the
        step's shortest row, weight 0): every rank joins each collective parameter gather and gradient reduction.
        `penalty`: add the subspace's penalty (once per micro-step)."""
        params = self.params
        row_weight = torch.full((max(len(rows), 1),), float(len(rows) > 0), device=device)
        rows = rows if len(rows) else np.array([shortest])
        batch = {key: value.to(device) for key, value in collate(encoded, rows, pad_id).items()}
        mixing = subspace.mixing(torch.from_numpy(weights[rows]).to(device)) if subspace else nullcontext()
        with mixing:
            losses = letter_losses(engine, batch, virtual_tokens_in_sequence(params))
            loss = (losses * row_weight).sum() * scale
            if subspace is not None and penalty:  # once a micro-step: the mean over them leaves it at full weight
                loss = loss + params.subspace_cos_penalty * subspace.cos_penalty
        engine.backward(loss)
        return torch.stack([(losses.detach() * row_weight).sum(), row_weight.sum(),
                            (batch["attention_mask"].sum(1) * row_weight).sum()]).double()

    def _save(self, engine, info: RankInfo, names: list[str], step: int, run_config: dict, zero3: bool) -> None:
        """The adapter under each name (none: the state only), then the training state that resumes from this
        step."""
        import deepspeed

        trainable = [p for p in engine.module.parameters() if p.requires_grad]
        gathered = deepspeed.zero.GatheredParameters(trainable, modifier_rank=None) if zero3 else nullcontext()
        with gathered:
            for name in names:
                self._write_adapter(engine.module, info, name)
        tag = f"step{step}"
        (self.state_dir / tag).mkdir(parents=True, exist_ok=True)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, self.state_dir / tag / f"rng_rank{info.rank}.pt")
        engine.save_checkpoint(self.state_dir, tag=tag, save_latest=False, exclude_frozen_parameters=True,
                               client_state={"step": step, "sha256": run_config["sha256"]})
        if info.is_main:  # the commit point: resume.json names a state that every rank has finished writing
            write_json({"tag": tag, "step": step, **run_config}, self.state_dir / "resume.json")
            for old in self.state_dir.iterdir():
                if old.is_dir() and old.name != tag:
                    shutil.rmtree(old)
            log.info("step %d: saved %s", step, ", ".join(names + ["the training state"]))
        dist.barrier()

    def _write_adapter(self, model, info: RankInfo, name: str) -> None:
        """Into a partial folder, then renamed: a folder under its final name is complete."""
        final = self.out / "checkpoints" / name
        partial = final.with_name(f".{name}.partial")
        if info.is_main:
            shutil.rmtree(partial, ignore_errors=True)
        dist.barrier()
        save_adapter(model, partial, info.is_main)
        dist.barrier()
        if info.is_main:
            shutil.rmtree(final, ignore_errors=True)  # left by a killed attempt at this step
            partial.rename(final)

    def _resume(self, engine, info: RankInfo, run_config: dict) -> int:
        """Optimizer steps already done: 0, or those of the last saved state (weights, optimizer, schedule, RNG)."""
        pointer = self.state_dir / "resume.json"
        if not pointer.is_file():
            return 0
        saved = json.loads(pointer.read_text())
        check_same_run(saved, run_config, f"training state {str(self.state_dir)!r}")
        _, client_state = engine.load_checkpoint(self.state_dir, tag=saved["tag"], load_module_strict=False)
        if client_state is None or client_state.get("sha256") != run_config["sha256"]:
            raise FinetuneError(f"training state {str(self.state_dir / saved['tag'])!r} is incomplete or from "
                                "another run; delete the train_state folder to start over")
        rng = torch.load(self.state_dir / saved["tag"] / f"rng_rank{info.rank}.pt")
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"])
        log.info("resuming after step %d from %s", saved["step"], self.state_dir / saved["tag"])
        return saved["step"]

    def _trim_log(self, info: RankInfo, done: int) -> None:
        """Keep the log rows of the steps that the (resumed) state includes; later ones are run again."""
        if not info.is_main:
            return
        rows = []
        if self.log_path.is_file():
            with open(self.log_path, newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= done]
        with atomic_path(self.log_path) as tmp, open(tmp, "w", newline="") as handle:
            if rows:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)

    def _log_step(self, info: RankInfo, record: dict) -> None:
        if not info.is_main:
            return
        new = not self.log_path.is_file() or self.log_path.stat().st_size == 0
        with open(self.log_path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(record))
            if new:
                writer.writeheader()
            writer.writerow(record)
        log.info("step %d: loss %.4f, lr %.3g, %.2f s", record["step"], record["loss"], record["lr"],
                 record["step_time_s"])
