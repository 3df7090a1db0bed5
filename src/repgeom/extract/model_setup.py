"""The model an extraction runs: base weights, an optional peft adapter, and how it is placed (one device,
`device_map="auto"` layer sharding, or DeepSpeed ZeRO-3 partitioning across ranks)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from repgeom.distributed import RankInfo
from repgeom.models.loading import ModelLoadError, load_model, model_fingerprint


@dataclass
class ExtractionModel:
    model: nn.Module
    input_device: torch.device
    # Prompt tuning / prefix tuning: peft adds virtual tokens and ignores position_ids.
    prompt_learning: bool


def compute_device(info: RankInfo, device_map: str | None) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if device_map is None:
        torch.cuda.set_device(info.local_rank)
    return torch.device("cuda", 0 if device_map else info.local_rank)


def load_model_config(spec: str, revision: str | None = None):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(spec, revision=revision)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"no usable config.json for model {spec!r}: {err}") from err


def read_adapter_config(adapter: str):
    from peft import PeftConfig

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelLoadError(f"adapter folder {adapter!r} has no adapter_config.json (expected a peft save_pretrained folder)")
    return PeftConfig.from_pretrained(adapter)


def adapter_fingerprint(adapter: str | None) -> dict | None:
    return None if adapter is None else model_fingerprint(adapter)


def max_prompt_length(requested: int | None, model_config, adapter_config) -> int:
    """Tokens a prompt may have: --max-length, else the model's context, less any virtual tokens of the adapter."""
    limit = requested or getattr(model_config.get_text_config(), "max_position_embeddings", None)
    if limit is None:
        raise ModelLoadError("the model config has no max_position_embeddings: give --max-length")
    virtual = adapter_config.num_virtual_tokens if adapter_config is not None and adapter_config.is_prompt_learning else 0
    return limit - virtual


def read_zero3_config(path: str, dtype: torch.dtype) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read DeepSpeed config {path!r}: {err}") from err
    stage = config.get("zero_optimization", {}).get("stage")
    if stage != 3:
        raise ValueError(f"DeepSpeed config {path!r} has zero_optimization.stage {stage!r}; --zero3 needs stage 3")
    config.setdefault("train_micro_batch_size_per_gpu", 1)  # required by DeepSpeed, unused for inference
    config.setdefault("bf16", {"enabled": dtype == torch.bfloat16})
    config.setdefault("fp16", {"enabled": dtype == torch.float16})
    return config


def load_extraction_model(spec: str, device: torch.device, dtype: torch.dtype, adapter: str | None = None,
                          revision: str | None = None, zero3_config: dict | None = None,
                          device_map: str | None = None) -> ExtractionModel:
    """Load weights and adapter. LoRA is merged into the weights (one matmul per layer) except under ZeRO-3, where
    the weights are partitioned; prompt-learning adapters stay wrapped, since peft adds their virtual tokens."""
    if zero3_config is not None:
        from transformers.integrations import HfDeepSpeedConfig

        # While this object lives, from_pretrained loads each rank's partition only (deepspeed.zero.Init).
        zero3_loading = HfDeepSpeedConfig(zero3_config)  # noqa: F841
    model = load_model(spec, device=device, dtype=str(dtype).removeprefix("torch."), revision=revision,
                       device_map=device_map)
    prompt_learning = False
    if adapter is not None:
        from peft import PeftModel

        prompt_learning = read_adapter_config(adapter).is_prompt_learning
        try:
            model = PeftModel.from_pretrained(model, adapter)
        except (ValueError, RuntimeError, KeyError) as err:
            raise ModelLoadError(f"adapter {adapter!r} does not fit model {spec!r}: {type(err).__name__}: {err}") from err
        if not prompt_learning and zero3_config is None:
            model = model.merge_and_unload()
    if zero3_config is not None:
        import deepspeed

        model = deepspeed.initialize(model=model, config=zero3_config)[0].module
    model.eval()
    input_device = model.get_input_embeddings().weight.device if zero3_config is None else device
    return ExtractionModel(model=model, input_device=input_device, prompt_learning=prompt_learning)
