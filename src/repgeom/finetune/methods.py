"""The trainable part of each method, all through peft: LoRA, prompt tuning, prefix tuning, and the prefix subspace
(a simplex of prefixes trained jointly, saved as an ordinary prefix-tuning adapter holding the simplex centre)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from repgeom.finetune.params import FinetuneError, FinetuneParams

VERTICES_FILE = "subspace_vertices.safetensors"  # beside the adapter of a prefix-subspace checkpoint


def linear_layer_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's Linear layers (q_proj, up_proj, lm_head, ...)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def resolve_target_modules(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Map each target to a Linear layer name of this architecture: an exact name, or a role `x` for `x_proj`
    (q, k, v, o, gate, up, down on Llama, Mistral, Qwen2 and Gemma)."""
    available = linear_layer_names(model)
    resolved, unknown = [], []
    for target in targets:
        match = next((name for name in (target, f"{target}_proj") if name in available), None)
        (resolved if match else unknown).append(match or target)
    if unknown:
        raise FinetuneError(f"LoRA target module(s) {unknown} not found in {type(model).__name__}; its Linear "
                            f"layers are named {available}")
    return resolved


def virtual_tokens_in_sequence(params: FinetuneParams) -> int:
    """Prompt tuning prepends its virtual tokens to the input sequence; prefix tuning puts them in the attention
    cache only, so the sequence (and every representation taken from it) keeps its own length."""
    return params.num_virtual_tokens if params.method == "prompt_tuning" else 0


def peft_config(model: nn.Module, params: FinetuneParams):
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, TaskType

    if params.method == "lora":
        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=params.lora_r, lora_alpha=params.lora_alpha,
                          lora_dropout=params.lora_dropout,
                          target_modules=resolve_target_modules(model, params.target_modules))
    if params.method == "prompt_tuning":
        # Start from embeddings of random vocabulary tokens, at the scale of the inputs the model knows.
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=params.num_virtual_tokens,
                                  prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
    # Prefix tuning and the subspace: per-layer keys and values. peft sizes them from the model's key/value heads,
    # so grouped-query attention works (checked against a hand-built cache in tests/finetune/test_methods.py).
    return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=params.num_virtual_tokens)


def trainable_model(model: nn.Module, params: FinetuneParams):
    """The base model wrapped by peft for the method; the subspace swaps peft's prefix encoder for its own."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, peft_config(model, params))
    if params.method == "prefix_subspace":
        encoder = peft_model.prompt_encoder[peft_model.active_adapter]
        n_prefix, dim = encoder.embedding.weight.shape
        peft_model.prompt_encoder[peft_model.active_adapter] = PrefixSubspace(params.subspace_vertices, n_prefix, dim)
    return peft_model


def mean_squared_cosine(vertices: torch.Tensor) -> torch.Tensor:
    """Mean of cos^2 between every pair of flattened vertices: 0 when they are orthogonal."""
    flat = torch.nn.functional.normalize(vertices.flatten(1).float(), dim=1)
    first, second = torch.triu_indices(len(flat), len(flat), offset=1)
    return ((flat @ flat.T)[first, second] ** 2).mean()


class PrefixSubspace(nn.Module):
    """Stands in for peft's prefix encoder while training: K vertex prefixes, each example's prefix a convex mix of
    them with weights the trainer sets (`mixing`). Without weights it returns the centre, the mean of the
    vertices, which is what peft's `save_pretrained` then stores as an ordinary prefix-tuning adapter."""

    def __init__(self, n_vertices: int, num_virtual_tokens: int, dim: int):
        super().__init__()
        self.shape = (n_vertices, num_virtual_tokens, dim)
        # All vertices in one table under peft's attribute name (peft reads `embedding.weight` for its device);
        # each vertex starts as peft initialises a prefix. Calling the table (not reading its weight) lets
        # ZeRO-3 gather it in its forward hook.
        self.embedding = nn.Embedding(n_vertices * num_virtual_tokens, dim)
        self.mix_weights: torch.Tensor | None = None
        self.cos_penalty: torch.Tensor | None = None

    def vertices(self) -> torch.Tensor:
        # The row indices are made where the table is, at each call: ZeRO-3 moves parameters to the GPU but not
        # buffers, so an index buffer built with the module would stay on the CPU.
        rows = torch.arange(self.embedding.num_embeddings, device=self.embedding.weight.device)
        return self.embedding(rows).view(self.shape)

    def forward(self, prompt_tokens: torch.Tensor) -> torch.Tensor:
        vertices = self.vertices()[:, prompt_tokens[0]]  # every row of prompt_tokens is 0..num_virtual_tokens-1
        if self.mix_weights is None:
            return vertices.mean(0).expand(len(prompt_tokens), -1, -1)
        self.cos_penalty = mean_squared_cosine(vertices)
        return torch.einsum("bk,kpd->bpd", self.mix_weights.to(vertices.dtype), vertices)

    @contextmanager
    def mixing(self, weights: torch.Tensor):
        """Within the block, forward passes mix the vertices with `weights` [B, K] and set `cos_penalty`."""
        self.mix_weights, self.cos_penalty = weights, None
        try:
            yield self
        finally:
            self.mix_weights = None


def prefix_subspace(peft_model) -> PrefixSubspace | None:
    encoders = getattr(peft_model, "prompt_encoder", {})
    encoder = encoders[peft_model.active_adapter] if peft_model.active_adapter in encoders else None
    return encoder if isinstance(encoder, PrefixSubspace) else None


def save_adapter(peft_model, folder: Path, is_main: bool) -> None:
    """`save_pretrained`, so that `PeftModel.from_pretrained` loads every method; a subspace adds its vertices.
    Every rank calls it, since under ZeRO-3 the prompt-learning encoders run forward passes that all ranks must
    join; only the main rank writes."""
    from safetensors.torch import save_file

    peft_model.save_pretrained(folder, is_main_process=is_main)
    if is_main:
        write_canonical_adapter_config(Path(folder))
    subspace = prefix_subspace(peft_model)
    if subspace is not None:
        with torch.no_grad():
            vertices = subspace.vertices().detach().float().cpu().contiguous()
        if is_main:
            save_file({"vertices": vertices}, folder / VERTICES_FILE)


def write_canonical_adapter_config(folder: Path) -> None:
    """Rewrite peft's `adapter_config.json` in canonical form, atomically: peft writes `target_modules` (a set) in the
    hash order of the process (PYTHONHASHSEED), so the same adapter saved twice would differ in that file."""
    import json

    from repgeom.extract.model_setup import ADAPTER_CONFIG, canonical_adapter_config_text
    from repgeom.io import atomic_path

    path = folder / ADAPTER_CONFIG
    written = path.read_text()
    text = canonical_adapter_config_text(json.loads(written))
    if written != text:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
            tmp.chmod(path.stat().st_mode & 0o777)  # as peft made it, not mkstemp's 0600
