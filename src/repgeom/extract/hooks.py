"""Where to read representations, found by inspecting the model, and forward hooks that keep only the rows needed.

The blocks are the `nn.ModuleList` holding `num_hidden_layers` modules of one class. A probe forward pass then
identifies, by the tensors that actually flow, each block's input norm (the first norm module applied to the
block's input), its post-attention norm (the norm applied to the residual stream after attention: its input is
exactly the block's input plus the output of one of the block's direct submodules) and the final norm (the norm
applied to the last block's output). This covers Llama, Mistral, Qwen2/3, Gemma and GPT-NeoX alike, with no table of
attribute names.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from repgeom.errors import InputError

HOOKS = ("block_input_norm", "post_attention_norm", "residual")


class UnsupportedArchitecture(InputError, RuntimeError):
    """The model lacks the decoder-only layout the extractor relies on; the message says what is missing."""


@dataclass
class HookPoint:
    """A stored layer: the input (`reads_input`) or the output of `module`; `name` is 'module.path:input|output'."""
    name: str
    module: nn.Module
    reads_input: bool


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (module names then match the plain model's)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or "norm" in type(module).__name__.lower()


def first_tensor(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def block_input(args, kwargs):
    return args[0] if args else kwargs.get("hidden_states")


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_layers = getattr(config, "num_hidden_layers", None)
    candidates = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and n_layers and len(module) == n_layers
                  and len({type(block) for block in module}) == 1]
    if len(candidates) != 1:
        found = [f"{name} ({len(module)})" for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
        raise UnsupportedArchitecture(
            f"{type(model).__name__}: expected exactly one nn.ModuleList of {n_layers} identical transformer blocks "
            f"(config.num_hidden_layers), found {len(candidates)}; module lists present: {found or 'none'}. "
            "Only decoder-only models with the usual layout (embeddings, a list of blocks, a final norm) are supported")
    return candidates[0]


def find_hook_points(model: nn.Module, hook: str, probe_ids: torch.Tensor) -> list[HookPoint]:
    """The L+1 stored layers: for each of the L blocks its input (`residual`), its input norm's output
    (`block_input_norm`) or its post-attention norm's output (`post_attention_norm`), then the final norm's output.
    `probe_ids` [1, S] feed one forward pass."""
    if hook not in HOOKS:
        raise ValueError(f"unknown hook point {hook!r}; use one of {', '.join(HOOKS)}")
    base = unwrap(model)
    blocks_name, blocks = find_blocks(base)
    block_modules = {id(m) for m in blocks.modules()}
    inner_norms = [(name, m) for name, m in blocks[0].named_modules() if name and is_norm(m)]
    outer_norms = [(name, m) for name, m in base.named_modules() if is_norm(m) and id(m) not in block_modules]

    # Inputs of each norm module on its first call, in call order; outputs of the first block's direct submodules
    # (its sublayers); and the first/last block's input/output.
    inner_inputs: dict[str, torch.Tensor] = {}
    outer_inputs: dict[str, torch.Tensor] = {}
    sublayer_outputs: dict[str, torch.Tensor] = {}
    ends: dict[str, torch.Tensor] = {}

    def record(inputs: dict, name: str):
        def pre_hook(module, args, kwargs):
            inputs.setdefault(name, block_input(args, kwargs))
        return pre_hook

    def record_output(name: str):
        def hook(module, args, output):
            sublayer_outputs.setdefault(name, first_tensor(output))
        return hook

    handles = [blocks[0].register_forward_pre_hook(record(ends, "block_input"), with_kwargs=True),
               blocks[-1].register_forward_hook(lambda m, a, out: ends.setdefault("block_output", first_tensor(out)))]
    handles += [m.register_forward_pre_hook(record(inner_inputs, name), with_kwargs=True) for name, m in inner_norms]
    handles += [m.register_forward_pre_hook(record(outer_inputs, name), with_kwargs=True) for name, m in outer_norms]
    handles += [m.register_forward_hook(record_output(name)) for name, m in blocks[0].named_children()]
    try:
        with torch.no_grad():
            model(input_ids=probe_ids, attention_mask=torch.ones_like(probe_ids), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()

    final = _first_fed_by(outer_inputs, ends.get("block_output"))
    if final is None:
        raise UnsupportedArchitecture(
            f"{type(base).__name__}: no norm module outside the blocks receives the last block's output; "
            f"norm modules found there: {[n for n, _ in outer_norms] or 'none'}")
    final_point = HookPoint(f"{final}:output", base.get_submodule(final), reads_input=False)
    if hook == "residual":
        return [HookPoint(f"{blocks_name}.{i}:input", block, True) for i, block in enumerate(blocks)] + [final_point]
    norms_in_block = [n for n, _ in inner_norms] or "none"
    if hook == "block_input_norm":
        norm = _first_fed_by(inner_inputs, ends.get("block_input"))
        if norm is None:
            raise UnsupportedArchitecture(
                f"{type(base).__name__}: its blocks apply no norm to their input (norms in a block: "
                f"{norms_in_block}), so hook 'block_input_norm' is undefined; use hook 'residual'")
    else:
        found = _fed_by_residual_sum(inner_inputs, sublayer_outputs, ends.get("block_input"))
        if not found:
            raise UnsupportedArchitecture(
                f"{type(base).__name__}: no norm in its blocks receives the residual stream after attention (the "
                f"block's input plus one sublayer's output; norms in a block: {norms_in_block}), so hook "
                "'post_attention_norm' is undefined: blocks with parallel attention and MLP, norms only on the "
                "sublayers' outputs, or a scaled residual add have none; use hook 'block_input_norm' or 'residual'")
        if len(found) > 1:
            raise UnsupportedArchitecture(
                f"{type(base).__name__}: norms {found} of its blocks all receive the residual stream after "
                "attention, so hook 'post_attention_norm' is ambiguous; use hook 'block_input_norm' or 'residual'")
        norm = found[0]
    return [HookPoint(f"{blocks_name}.{i}.{norm}:output", block.get_submodule(norm), False)
            for i, block in enumerate(blocks)] + [final_point]


def _same_tensor(value, target) -> bool:
    return (isinstance(value, torch.Tensor) and isinstance(target, torch.Tensor) and value.shape == target.shape
            and torch.equal(value, target.to(value.device)))


def _first_fed_by(inputs: dict[str, torch.Tensor], target: torch.Tensor | None) -> str | None:
    """The first module (in call order) whose input was exactly `target`."""
    return next((name for name, value in inputs.items() if _same_tensor(value, target)), None)


def _fed_by_residual_sum(norm_inputs: dict[str, torch.Tensor], sublayer_outputs: dict[str, torch.Tensor],
                         block_in: torch.Tensor | None) -> list[str]:
    """The norms (in call order) whose input was exactly the block's input plus one sublayer's output: the residual
    stream after attention (Llama's `post_attention_layernorm`, Gemma 2's `pre_feedforward_layernorm`). The block
    adds the same two tensors itself, so the sum is bit-identical; a q/k norm inside attention, a norm of a
    sublayer's output and the MLP's residual (its base is not the block's input) never match."""
    if not isinstance(block_in, torch.Tensor):
        return []
    sums = [block_in + output.to(block_in.device) for output in sublayer_outputs.values()
            if isinstance(output, torch.Tensor) and output.shape == block_in.shape]
    return [name for name, value in norm_inputs.items() if any(_same_tensor(value, total) for total in sums)]


class RowCapture:
    """Forward hooks that slice, at every hook point, the rows the extraction keeps as soon as they exist: each
    prompt's last token (and the sampled tokens of some layers); and that feed the LM head only the last-token
    rows, so no [batch, seq, vocab] logits are made.

    The logit lens (`start(..., lens=True)`): pre-hooks keep the last-token row of the residual stream entering each
    block, and the final norm's pre-hook appends these L rows to its input after the sequence, so that the model's
    own final norm and LM head (and whatever the model does to the logits after them) treat them in the very calls
    that make the prediction; the LM head then sees [B, L+1, D]: the L lens rows, then the last token's. Inside one
    forward pass, the extra rows cost no extra module call, which keeps ZeRO-3's collective gathers and
    device_map's placement as they are.

    Prompt tuning prepends virtual tokens to the sequence: the hooks find their number as the difference between
    the hidden states' length and the input's (less the appended lens rows), and index past them.
    """

    def __init__(self, points: list[HookPoint], blocks: Sequence[nn.Module], output_embeddings: nn.Module,
                 sampled_layers: list[int]):
        """`points` from `find_hook_points` (the last is the final norm's output); `blocks` the L transformer blocks."""
        self.active = False
        self.sample_slot = {layer: slot for slot, layer in enumerate(sampled_layers)}
        self.final_norm = points[-1].module
        self.handles = []
        for layer, point in enumerate(points):
            if point.reads_input:
                hook = self._input_hook(layer)
                self.handles.append(point.module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                self.handles.append(point.module.register_forward_hook(self._output_hook(layer)))
        self.handles += [block.register_forward_pre_hook(self._lens_input_hook(i), with_kwargs=True)
                         for i, block in enumerate(blocks)]
        self.handles.append(self.final_norm.register_forward_pre_hook(self._append_lens_rows, with_kwargs=True))
        self.handles.append(output_embeddings.register_forward_pre_hook(self._slice_lm_head_input))
        self.n_layers = len(points)
        self.n_blocks = len(blocks)

    def start(self, seq_len: int, last_index: torch.Tensor, sample_batch_rows: torch.Tensor,
              sample_index: torch.Tensor, lens: bool = False) -> None:
        """Arm the hooks for one batch: `last_index` [B] and (`sample_batch_rows`, `sample_index`) [n] index the
        batch's `input_ids` [B, seq_len]; rows are copied to `last_index`'s device. `lens`: the LM head gives the
        logit lens too (the pass's logits are [B, L+1, V], layer by layer, else [B, 1, V])."""
        self.seq_len = seq_len
        self.device = last_index.device
        self.indices = {self.device: (torch.arange(len(last_index), device=self.device), last_index,
                                      sample_batch_rows, sample_index)}
        self.last_rows: list[torch.Tensor | None] = [None] * self.n_layers
        self.sample_rows: list[torch.Tensor | None] = [None] * len(self.sample_slot)
        self.lens = lens
        self.lens_rows: list[torch.Tensor | None] = [None] * self.n_blocks
        self.appended = 0  # lens rows after the sequence in the final norm's output and the LM head's input
        self.active = True

    def stop(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The captured last-token rows [B, n_layers, D] and sampled rows [n_sample, n_sampled_layers, D]."""
        self.active = False
        missing = [i for i, rows in enumerate(self.last_rows) if rows is None]
        if missing:
            raise UnsupportedArchitecture(f"hook points {missing} did not run during the forward pass")
        if self.lens and self.appended != self.n_blocks:
            raise UnsupportedArchitecture("the final norm did not run after the blocks: no logit lens")
        last = torch.stack(self.last_rows, dim=1)
        sample = torch.stack(self.sample_rows, dim=1) if self.sample_rows else None
        return last, sample

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _indices_on(self, device):
        if device not in self.indices:
            self.indices[device] = tuple(t.to(device) for t in self.indices[self.device])
        return self.indices[device]

    def _virtual(self, hidden: torch.Tensor, trailing: int) -> int:
        """Virtual tokens in front of the sequence in `hidden` [B, virtual + seq_len + trailing, D]."""
        return hidden.shape[1] - trailing - self.seq_len

    def _last_token(self, hidden: torch.Tensor, trailing: int = 0) -> torch.Tensor:
        """Each prompt's last-token row [B, D] of `hidden`, on its device."""
        batch_rows, last_index, _, _ = self._indices_on(hidden.device)
        return hidden[batch_rows, last_index + self._virtual(hidden, trailing)]

    def _keep(self, layer: int, hidden: torch.Tensor, trailing: int = 0) -> None:
        self.last_rows[layer] = self._last_token(hidden, trailing).to(self.device, non_blocking=True)
        slot = self.sample_slot.get(layer)
        if slot is not None:
            _, _, sample_batch_rows, sample_index = self._indices_on(hidden.device)
            self.sample_rows[slot] = hidden[sample_batch_rows, sample_index + self._virtual(hidden, trailing)].to(
                self.device, non_blocking=True)

    def _input_hook(self, layer: int):
        def hook(module, args, kwargs):
            if self.active:
                self._keep(layer, block_input(args, kwargs))
        return hook

    def _output_hook(self, layer: int):
        def hook(module, args, output):
            if self.active:
                self._keep(layer, first_tensor(output), self.appended if module is self.final_norm else 0)
        return hook

    def _lens_input_hook(self, block: int):
        def hook(module, args, kwargs):
            if self.active and self.lens:
                self.lens_rows[block] = self._last_token(block_input(args, kwargs))
        return hook

    def _append_lens_rows(self, module, args, kwargs):
        if not (self.active and self.lens):
            return None
        missing = [i for i, rows in enumerate(self.lens_rows) if rows is None]
        if missing:
            raise UnsupportedArchitecture(f"blocks {missing} did not run before the final norm: no logit lens")
        hidden = block_input(args, kwargs)
        rows = torch.stack([rows.to(hidden.device) for rows in self.lens_rows], dim=1)
        extended = torch.cat([hidden, rows], dim=1)
        self.appended = rows.shape[1]
        if args:
            return (extended, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": extended}

    def _slice_lm_head_input(self, module, args):
        if not self.active:
            return None
        hidden = args[0]
        last = self._last_token(hidden, self.appended).unsqueeze(1)
        return (torch.cat([hidden[:, hidden.shape[1] - self.appended:], last], dim=1), *args[1:])
