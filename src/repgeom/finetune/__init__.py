"""Fine-tuning stage: peft adapters trained under DeepSpeed (see `python -m repgeom.finetune --help`)."""
from repgeom.finetune.params import FinetuneError, FinetuneParams, default_params, parse_params
from repgeom.finetune.plan import checkpoint_steps

__all__ = ["FinetuneError", "FinetuneParams", "checkpoint_steps", "default_params", "parse_params"]
