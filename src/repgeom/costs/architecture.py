"""A decoder-only model's shape as the cost model needs it: depth, width, MLP width, heads, vocabulary, parameters.

Read from where the model comes from without loading it: the `build` settings, the GGUF header, a local folder's
config.json, or, for a hub id (nothing is downloaded), the published shape in `resources/costs/architectures.yaml`.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml

from repgeom.errors import InputError
from repgeom.models.gguf import gguf_metadata, resolve_gguf
from repgeom.workflow.models import ModelConfigError, model_source

ARCHITECTURES = files("repgeom") / "resources" / "costs" / "architectures.yaml"


class ArchitectureError(InputError):
    """The model's shape cannot be known offline; the message names the model and what to add."""


@dataclass(frozen=True)
class Architecture:
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    tied_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @property
    def block_params(self) -> int:
        """One decoder block: q and o (D x D), k and v (D x kv width), the gated MLP (3 x D x I), two norms."""
        d, kv = self.hidden_size, self.n_kv_heads * self.head_dim
        return 2 * d * d + 2 * d * kv + 3 * d * self.intermediate_size + 2 * d

    @property
    def matmul_params(self) -> int:
        """The weights every token multiplies through (blocks and the output head): 2 FLOP each per token."""
        return self.n_layers * self.block_params + self.vocab_size * self.hidden_size

    @property
    def n_params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        return self.n_layers * self.block_params + embeddings + self.hidden_size

    def lora_params(self, rank: int) -> int:
        """LoRA on q, k, v, o, gate, up, down: rank x (fan_in + fan_out) for each projection of each block."""
        d, kv, inter = self.hidden_size, self.n_kv_heads * self.head_dim, self.intermediate_size
        per_block = rank * ((d + d) * 2 + (d + kv) * 2 + (d + inter) * 3)
        return self.n_layers * per_block

    @classmethod
    def from_hf_config(cls, config: Mapping) -> "Architecture":
        """From a transformers config (its dict, or a `PretrainedConfig`)."""
        config = config if isinstance(config, Mapping) else config.to_dict()
        config = {**config, **(config.get("text_config") or {})}
        heads = config["num_attention_heads"]
        return cls(n_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"],
                   intermediate_size=config["intermediate_size"], n_heads=heads,
                   n_kv_heads=config.get("num_key_value_heads") or heads, vocab_size=config["vocab_size"],
                   tied_embeddings=bool(config.get("tie_word_embeddings", False)))


@functools.cache
def published_architectures() -> dict:
    return yaml.safe_load(ARCHITECTURES.read_text())["architectures"]


def _from_build(build: Mapping) -> Architecture:
    arch = build["architecture"]
    return Architecture(n_layers=arch["num_layers"], hidden_size=arch["hidden_size"],
                        intermediate_size=arch["intermediate_size"], n_heads=arch["num_heads"],
                        n_kv_heads=arch.get("num_kv_heads") or arch["num_heads"], vocab_size=build["vocab_size"])


def _from_gguf(source: Mapping) -> Architecture:
    path = resolve_gguf(source).path
    meta = gguf_metadata(path)
    name = meta.get("general.architecture")
    try:
        heads = meta[f"{name}.attention.head_count"]
        return Architecture(n_layers=meta[f"{name}.block_count"], hidden_size=meta[f"{name}.embedding_length"],
                            intermediate_size=meta[f"{name}.feed_forward_length"], n_heads=heads,
                            n_kv_heads=meta.get(f"{name}.attention.head_count_kv", heads),
                            vocab_size=meta[f"{name}.vocab_size"],
                            # GGUF files of tied models carry no separate output tensor; SmolLM2 is tied.
                            tied_embeddings=True)
    except KeyError as err:
        raise ArchitectureError(f"GGUF file {str(path)!r} has no {err.args[0]} in its metadata") from None


def _from_folder(folder: str) -> Architecture:
    path = Path(folder) / "config.json"
    try:
        return Architecture.from_hf_config(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ModelConfigError(f"{path} does not exist: the model folder {folder!r} holds no model") from None
    except KeyError as err:
        raise ModelConfigError(f"{path}: no {err.args[0]} in the model's config") from None
    except (OSError, ValueError) as err:
        raise ModelConfigError(f"{path}: not a readable JSON model config ({err})") from None


def model_architecture(name: str, entry: Mapping) -> Architecture:
    """The shape of the configured model `name` (its `models.NAME` entry), offline."""
    source = model_source(entry)
    if source == "build":
        return _from_build(entry["build"])
    if source == "gguf":
        return _from_gguf(entry["gguf"])
    if source == "path":
        return _from_folder(entry["path"])
    published = published_architectures()
    if entry["hub"] not in published:
        raise ArchitectureError(
            f"models.{name}.hub: {entry['hub']!r} is not among the published shapes in {ARCHITECTURES} "
            f"(known: {', '.join(sorted(published))}); give models.{name}.path to a local copy, or add its "
            "config.json values there")
    return Architecture(**{key: value for key, value in published[entry["hub"]].items() if key != "source"})
