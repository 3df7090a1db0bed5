"""Fine-tuning hyperparameters: the reference values (docs/protocol.md §3.1) and the checks on a `--params-json` object."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from repgeom.errors import InputError

METHODS = ("lora", "prompt_tuning", "prefix_tuning", "prefix_subspace")
PROMPT_LEARNING_METHODS = ("prompt_tuning", "prefix_tuning", "prefix_subspace")
# Roles, matched to the architecture's Linear layer names (`q` -> `q_proj` on Llama); exact names work too.
REFERENCE_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


class FinetuneError(InputError):
    """Bad input to the fine-tuning stage: the message names the file, key or row at fault."""


@dataclass(frozen=True)
class FinetuneParams:
    """Defaults are the reference LoRA run for 8B-class models (Doimo et al.)."""
    method: str = "lora"
    lora_r: int = 64
    lora_alpha: float = 16
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = REFERENCE_TARGETS
    lr: float = 2e-4
    epochs: int = 4
    effective_batch: int = 16
    micro_batch: int = 4
    # Padded tokens of one forward pass, at most: a micro-batch over it runs as several passes before the optimizer's
    # step (the same gradient); a longer row is a pass of its own. Memory follows it: 4 GB for SmolLM2-135M in
    # float32 on a CPU (repgeom.costs.memory).
    max_batch_tokens: int = 1024
    warmup_fraction: float = 0.05
    final_lr_fraction: float = 0.01
    n_checkpoints: int = 10
    # Prompt tuning, prefix tuning and the prefix subspace (no reference values: the paper fine-tunes with LoRA).
    num_virtual_tokens: int = 20
    subspace_vertices: int = 3
    subspace_cos_penalty: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


_POSITIVE_INT = ("lora_r", "epochs", "effective_batch", "micro_batch", "max_batch_tokens", "n_checkpoints",
                 "num_virtual_tokens")
_FRACTION = ("lora_dropout", "warmup_fraction")  # in [0, 1)


def default_params(size_class: str = "8b", method: str = "lora") -> dict:
    """The reference hyperparameters: `8b` (rank 64, alpha 16, lr 2e-4) or `70b` (rank 128, alpha 32, lr 1e-4,
    micro-batch 2 so that 8 ranks make the effective batch of 16 with no accumulation).

    Prompt-learning methods train few parameters from scratch and need a far larger rate: 1e-2, as in peft's
    prompt- and prefix-tuning examples (the reference protocol has no value for them)."""
    sizes = {"8b": {}, "70b": {"lora_r": 128, "lora_alpha": 32, "lr": 1e-4, "micro_batch": 2}}
    if size_class.lower() not in sizes:
        raise FinetuneError(f"unknown size class {size_class!r}; use one of {', '.join(sizes)}")
    if method not in METHODS:
        raise FinetuneError(f"unknown fine-tuning method {method!r}; use one of {', '.join(METHODS)}")
    params = {**FinetuneParams().as_dict(), **sizes[size_class.lower()], "method": method}
    if method in PROMPT_LEARNING_METHODS:
        params["lr"] = 1e-2
    params["target_modules"] = list(params["target_modules"])
    return params


def method_params(section: dict, method: str) -> dict:
    """A method's hyperparameters in the config's `finetune` section: the reference values of its size class,
    overridden by the method's own keys."""
    return {**default_params(section["size_class"], method), **section["methods"][method], "method": method}


def parse_params(raw: dict | FinetuneParams) -> FinetuneParams:
    """Check a params object (missing keys take the 8B reference defaults); errors name the key."""
    if isinstance(raw, FinetuneParams):
        return raw
    if not isinstance(raw, dict):
        raise FinetuneError(f"fine-tuning params must be a JSON object, got {type(raw).__name__}")
    known = FinetuneParams().as_dict()
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise FinetuneError(f"unknown fine-tuning param(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = {**known, **raw}

    def fail(key: str, expected: str) -> FinetuneError:
        return FinetuneError(f"fine-tuning param {key}={values[key]!r}: expected {expected}")

    if values["method"] not in METHODS:
        raise fail("method", f"one of {', '.join(METHODS)}")
    for key in (*_POSITIVE_INT, "subspace_vertices", "seed"):
        if not isinstance(values[key], int) or isinstance(values[key], bool):
            raise fail(key, "an integer")
    for key in _POSITIVE_INT:
        if values[key] < 1:
            raise fail(key, "a positive integer")
    if values["subspace_vertices"] < 2:
        raise fail("subspace_vertices", "at least 2 (a simplex needs two vertices)")
    for key in ("lr", "lora_alpha", "subspace_cos_penalty", *_FRACTION, "final_lr_fraction"):
        if not isinstance(values[key], (int, float)) or isinstance(values[key], bool):
            raise fail(key, "a number")
    if values["lr"] <= 0 or values["lora_alpha"] <= 0:
        raise fail("lr" if values["lr"] <= 0 else "lora_alpha", "a positive number")
    if values["subspace_cos_penalty"] < 0:
        raise fail("subspace_cos_penalty", "a number >= 0")
    for key in _FRACTION:
        if not 0 <= values[key] < 1:
            raise fail(key, "a fraction in [0, 1)")
    if not 0 <= values["final_lr_fraction"] <= 1:
        raise fail("final_lr_fraction", "a fraction in [0, 1]")
    targets = values["target_modules"]
    if isinstance(targets, str) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise fail("target_modules", "a non-empty list of module names such as [\"q\", \"v\"] or [\"q_proj\"]")
    values["target_modules"] = tuple(targets)
    return FinetuneParams(**values)
