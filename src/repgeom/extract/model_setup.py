"""The model an extraction runs: base weights, an optional peft adapter, and how it is placed (one device,
`device_map="auto"` layer sharding, or DeepSpeed ZeRO-3 partitioning across ranks)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from repgeom.distributed import RankInfo, rank_device
from repgeom.errors import InputError
from repgeom.models.loading import ModelLoadError, load_model, model_fingerprint
from repgeom.shipped import read_deepspeed_config


@dataclass
class ExtractionModel:
    model: nn.Module
    input_device: torch.device
    # Prompt tuning / prefix tuning: peft adds virtual tokens and ignores position_ids.
    prompt_learning: bool


def compute_device(info: RankInfo, device_map: str | None) -> torch.device:
    """The rank's device (`repgeom.distributed.rank_device`: stops when the job was given GPUs that torch cannot
    use); under a device map the inputs go to the first GPU, where the embedding is."""
    device = rank_device(info)
    if device.type != "cuda":
        return device
    if device_map:
        return torch.device("cuda", 0)
    torch.cuda.set_device(device)
    return device


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


ADAPTER_CONFIG = "adapter_config.json"
# peft config fields that hold sets (peft keeps target_modules as one and writes it in the process's hash order) or
# lists whose order carries no meaning: sorted in the canonical form.
ORDER_FREE_KEYS = ("target_modules", "exclude_modules", "modules_to_save", "layers_to_transform", "layers_pattern",
                   "target_parameters", "target_modules_bd_a", "target_modules_bd_b")
FINGERPRINT_FILES = (".safetensors", ".bin", ".json", ".model")  # as `model_fingerprint` picks them
ADAPTER_FINGERPRINT = "weights-bytes+canonical-json/1"


def canonical_adapter_config(config: dict) -> dict:
    """The adapter config with its order-free lists sorted (a set is written in an order that changes per process)."""
    config = dict(config)
    for key in ORDER_FREE_KEYS:
        value = config.get(key)
        if isinstance(value, (list, tuple, set)):
            try:
                config[key] = sorted(value)
            except TypeError:  # mixed types: leave as written
                config[key] = list(value)
    return config


def canonical_adapter_config_text(config: dict) -> str:
    """`adapter_config.json` as peft writes it (indent 2, sorted keys), with the order-free lists sorted."""
    return json.dumps(canonical_adapter_config(config), indent=2, sort_keys=True)


def _canonical_json_bytes(path: Path) -> bytes | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if path.name == ADAPTER_CONFIG and isinstance(value, dict):
        value = canonical_adapter_config(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def adapter_fingerprint(adapter: str | None) -> dict | None:
    """Identify an adapter folder by what it computes: the bytes of its weight files plus the canonical form of its
    JSON files (sorted keys; `adapter_config.json`'s order-free lists sorted), so that saving the same adapter again
    (in a process whose set order differs) keeps its fingerprint. A hub id is identified by id and revision."""
    if adapter is None:
        return None
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        return model_fingerprint(adapter)
    digest = hashlib.sha256(ADAPTER_FINGERPRINT.encode() + b"\n")
    for file in sorted(p for p in folder.iterdir() if p.suffix in FINGERPRINT_FILES and p.is_file()):
        content = _canonical_json_bytes(file) if file.suffix == ".json" else None
        digest.update(f"{file.name}\0{'canonical-json' if content is not None else 'bytes'}\0".encode())
        if content is not None:
            digest.update(hashlib.sha256(content).digest())
        else:
            file_digest = hashlib.sha256()
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    file_digest.update(block)
            digest.update(file_digest.digest())
    return {"model_id": str(folder), "weights_sha256": digest.hexdigest(), "fingerprint": ADAPTER_FINGERPRINT}


def max_prompt_length(requested: int | None, model_config, adapter_config) -> int:
    """Tokens a prompt may have: --max-length, else the model's context, less any virtual tokens of the adapter."""
    limit = requested or getattr(model_config.get_text_config(), "max_position_embeddings", None)
    if limit is None:
        raise ModelLoadError("the model config has no max_position_embeddings: give --max-length")
    virtual = adapter_config.num_virtual_tokens if adapter_config is not None and adapter_config.is_prompt_learning else 0
    return limit - virtual


def read_zero3_config(path: str | Path, dtype: torch.dtype) -> dict:
    config = read_deepspeed_config(path, InputError)
    stage = config.get("zero_optimization", {}).get("stage")
    if stage != 3:
        raise InputError(f"DeepSpeed config {str(path)!r} has zero_optimization.stage {stage!r}; --zero3 needs stage 3")
    config.setdefault("train_micro_batch_size_per_gpu", 1)  # required by DeepSpeed, unused for inference
    config.setdefault("bf16", {"enabled": dtype == torch.bfloat16})
    config.setdefault("fp16", {"enabled": dtype == torch.float16})
    return config


def load_extraction_model(spec: str, device: torch.device, dtype: torch.dtype, adapter: str | None = None,
                          revision: str | None = None, zero3_config: dict | None = None,
                          device_map: str | None = None, max_batch_tokens: int | None = None) -> ExtractionModel:
    """Load weights and adapter. LoRA is merged into the weights (one matmul per layer) except under ZeRO-3, where
    the weights are partitioned; prompt-learning adapters stay wrapped, since peft adds their virtual tokens. A device
    map leaves room on each GPU for forward passes of `max_batch_tokens` padded tokens (default: the loader's)."""
    if zero3_config is not None:
        from transformers.integrations import HfDeepSpeedConfig

        # While this object lives, from_pretrained loads each rank's partition only (deepspeed.zero.Init).
        zero3_loading = HfDeepSpeedConfig(zero3_config)  # noqa: F841
    model = load_model(spec, device=device, dtype=str(dtype).removeprefix("torch."), revision=revision,
                       device_map=device_map, reserved_batch_tokens=max_batch_tokens)
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
