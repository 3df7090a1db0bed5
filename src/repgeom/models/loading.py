"""Load a causal LM and its tokenizer from a hub id or a local `save_pretrained` folder.

The same code path serves `meta-llama/Meta-Llama-3-8B` and the default model that the workflow builds
offline: both go through `AutoModelForCausalLM` / `AutoTokenizer`.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

from repgeom.errors import InputError
from repgeom.letters import ANSWER_LETTERS

ANSWER_CUE = "Answer:"


class ModelLoadError(InputError, RuntimeError):
    """A model or tokenizer could not be loaded; the message says which and how to fix it."""


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _resolve(spec: str) -> tuple[str, bool]:
    """Return (spec, is_local): an existing folder is local, an `org/name` string is a hub id."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists():
        raise ModelLoadError(f"model path {spec!r} is a file, not a folder: give the folder that holds the model's "
                             "config.json, weights and tokenizer files (a `save_pretrained` folder)")
    if not _HUB_ID.match(spec) or path.suffix in (".json", ".safetensors", ".bin"):
        raise ModelLoadError(f"model path {spec!r} does not exist (no such folder)")
    return spec, False


# Any one of these makes a folder a tokenizer folder (fast tokenizers, sentencepiece, BPE/WordPiece vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json",
                   "vocab.txt", "merges.txt", "tokenizer.tiktoken")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def folder_contents(folder: str | Path, limit: int = 5) -> str:
    """What a folder holds, for an error message: 'it is empty' or 'it holds 7 entries: a, b, c, d, e, … (2 more)'."""
    try:
        names = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in Path(folder).iterdir())
    except OSError as err:
        return f"it cannot be listed ({type(err).__name__}: {err})"
    if not names:
        return "it is empty"
    shown = ", ".join(names[:limit]) + (f", … ({len(names) - limit} more)" if len(names) > limit else "")
    return f"it holds {len(names)} entr{'y' if len(names) == 1 else 'ies'}: {shown}"


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def _has_weights(folder: Path) -> bool:
    return any(p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir())


def _not_a_model_folder(folder: Path, lacks: str) -> ModelLoadError:
    """The error for a local folder that lacks `lacks` ('model or tokenizer (…)', 'tokenizer (…)', …)."""
    hint = ""
    if (folder / "adapter_config.json").is_file():
        hint = (" It holds a peft adapter (adapter_config.json): give the base model that its "
                "base_model_name_or_path names, and the adapter separately.")
    return ModelLoadError(
        f"folder {str(folder)!r} holds no {lacks}: {folder_contents(folder)}. Point the model's `path` at a "
        "`save_pretrained` folder (config.json, *.safetensors or pytorch_model*.bin weights, tokenizer files)."
        + hint)


def _folder_problem(folder: Path, config: bool, tokenizer: bool, weights: bool) -> ModelLoadError | None:
    """The error for a local folder that lacks a needed part (config.json, tokenizer files, weight files), or None."""
    has_config, has_tokenizer = (folder / "config.json").is_file(), _has_tokenizer(folder)
    if not has_config and not has_tokenizer and (config or tokenizer):
        return _not_a_model_folder(folder, "model or tokenizer (no config.json, no tokenizer files)")
    if config and not has_config:
        return _not_a_model_folder(folder, "model (no config.json)")
    if tokenizer and not has_tokenizer:
        return _not_a_model_folder(folder, f"tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, …)")
    if weights and not _has_weights(folder):
        return _not_a_model_folder(folder, "model weights (a config.json but no *.safetensors or *.bin file)")
    return None


def check_model_folder(spec: str, need_weights: bool = True) -> None:
    """Raise ModelLoadError unless a local folder holds a config.json, a tokenizer and (with `need_weights`)
    weight files, naming what it holds instead. Hub ids pass (the loaders report those); a path that is
    neither a folder nor a hub id raises. Cheap: it only lists the folder."""
    spec, is_local = _resolve(spec)
    if is_local and (problem := _folder_problem(Path(spec), config=True, tokenizer=True, weights=need_weights)):
        raise problem


# Not load errors: running out of memory while loading is reported as such.
_NOT_LOAD_ERRORS = (MemoryError, torch.OutOfMemoryError)


def _local_load_error(what: str, folder: str, err: Exception) -> ModelLoadError:
    message = " ".join(str(err).split())  # transformers' messages span lines
    if len(message) > 300:
        message = message[:300] + " …"
    return ModelLoadError(f"could not load the {what} from folder {folder!r} ({type(err).__name__}: {message}); "
                          f"{folder_contents(folder)}")


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value, read as huggingface_hub reads it."""
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _offline_hint(spec: str, err: Exception) -> ModelLoadError:
    cause = f"{type(err).__name__}: {' '.join(str(err).split())}"
    if _hub_offline():
        return ModelLoadError(
            f"could not load {spec!r}: HF_HUB_OFFLINE is set, so only the local Hugging Face cache is searched, "
            f"and {spec!r} is not in it ({cause}). On a machine with internet access, run `huggingface-cli download "
            f"{spec} --local-dir DIR`, copy DIR here and set the model's `path` to DIR in the config (or point "
            "`path` at a local copy you already have)."
        )
    return ModelLoadError(
        f"could not load {spec!r} from the Hugging Face hub ({cause}). "
        "This machine may be offline: download it once with `huggingface-cli download "
        f"{spec} --local-dir DIR` and set the model's `path` to DIR in the config, "
        "or set HF_HUB_OFFLINE=1 to use a copy already in the HF cache."
    )


def _raise_load_error(what: str, spec: str, is_local: bool, err: Exception) -> None:
    """Raise what a failed `from_pretrained` of a tokenizer or model means: a ModelLoadError naming the folder
    (local) or the offline hint (hub). Returns when the error is not about loading (out of memory, an interrupt)."""
    if is_local and not isinstance(err, _NOT_LOAD_ERRORS):
        raise _local_load_error(what, spec, err) from err
    if isinstance(err, OSError):
        raise _offline_hint(spec, err) from err
    if isinstance(err, ValueError):
        raise ModelLoadError(f"unsupported {what} for {spec!r}: {err}") from err


def load_tokenizer(spec: str, revision: str | None = None):
    from transformers import AutoTokenizer

    spec, is_local = _resolve(spec)
    if is_local and (problem := _folder_problem(Path(spec), config=False, tokenizer=True, weights=False)):
        raise problem
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, revision=revision)
    except Exception as err:  # transformers and tokenizers raise OSError, ValueError, KeyError, plain Exception, …
        _raise_load_error("tokenizer", spec, is_local, err)
        raise
    if tokenizer.pad_token_id is None:
        # Llama-style tokenizers ship no pad token; EOS is the usual stand-in and is masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (AVX512-BF16 or AMX): there they run several times
    faster than float32; elsewhere they are emulated, and slower."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 (the reference protocol) on a GPU and on a CPU with native bf16, float32 on other CPUs."""
    native = torch.device(device).type == "cuda" or cpu_has_native_bf16()
    return torch.bfloat16 if native else torch.float32


def parse_dtype(name: str | None, device: torch.device | str) -> torch.dtype:
    if name in (None, "auto"):
        return default_dtype(device)
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"unknown torch dtype {name!r}; use one of auto, {', '.join(table)}")
    return table[name]


# Padded tokens per forward pass that a device map leaves room for when the caller does not say (the extraction's
# default batch on a GPU).
DEFAULT_RESERVED_BATCH_TOKENS = 16384
# Rows of a batch, at most, per padded token, for the logit lens's budget: prompts of 32 tokens or more.
MIN_PROMPT_TOKENS = 32
# Beside the activations, per GPU: the CUDA context, cuBLAS and attention workspaces, allocator fragmentation.
GPU_OVERHEAD_BYTES = 2 << 30


def forward_reserve_bytes(config, batch_tokens: int, *, dtype_bytes: int = 2, rows: int | None = None,
                          blocks: int | None = None, lens: bool = True) -> int:
    """What one extraction forward pass of `batch_tokens` padded tokens holds on a GPU beside the weights, at most:

    * one block's transients: the MLP's gate, up and their product (3 x intermediate) and the residual stream,
      its norm and the attention output (3 x hidden) per token;
    * the keys and values of `blocks` blocks (default all), kept when rows continue a shared prefix's cache;
    * with `lens`, the logit lens: [rows, layers + 1, vocab] logits and a float32 log-softmax row, rows = `rows` or
      batch_tokens / MIN_PROMPT_TOKENS (only the GPU that holds the LM head needs it);
    * 10 % and GPU_OVERHEAD_BYTES for the context, workspaces and fragmentation.

    `config` is a transformers config (its text config is read)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, layers = text.hidden_size, text.num_hidden_layers
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_width = (getattr(text, "num_key_value_heads", None) or heads) * head_dim
    blocks = layers if blocks is None else blocks
    values = batch_tokens * (3 * intermediate + 3 * hidden) + batch_tokens * 2 * kv_width * blocks
    total = values * dtype_bytes
    if lens:
        rows = rows or max(1, batch_tokens // MIN_PROMPT_TOKENS)
        total += rows * (layers + 1) * text.vocab_size * dtype_bytes + rows * text.vocab_size * 4
    return int(1.1 * total) + GPU_OVERHEAD_BYTES


def device_map_max_memory(config, batch_tokens: int = DEFAULT_RESERVED_BATCH_TOKENS, free: dict[int, int] | None = None,
                          *, dtype_bytes: int = 2, rows: int | None = None) -> dict[int, int]:
    """`max_memory` for `device_map="auto"`: each GPU's free memory (default: torch's `mem_get_info`) less what a
    forward pass of `batch_tokens` needs there (`forward_reserve_bytes` with the blocks it will hold, spread evenly);
    the last GPU, which holds the LM head under transformers' balanced map, also keeps the logit lens's room.
    Without it accelerate fills the GPUs with weights and the first batch runs out of memory."""
    if free is None:
        free = {i: torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())}
    if not free:
        raise ModelLoadError("device_map='auto' needs at least one GPU, and torch sees none")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    blocks = -(-text.num_hidden_layers // len(free)) + 1
    last = max(free)
    budget = {}
    for gpu, available in free.items():
        reserve = forward_reserve_bytes(config, batch_tokens, dtype_bytes=dtype_bytes, rows=rows, blocks=blocks,
                                        lens=gpu == last)
        if available <= reserve:
            raise ModelLoadError(f"GPU {gpu} has {available / 2**30:.1f} GiB free, not more than the "
                                 f"{reserve / 2**30:.1f} GiB a forward pass of {batch_tokens} tokens needs beside the "
                                 "weights: use fewer --max-batch-tokens or more GPUs")
        budget[gpu] = available - reserve
    return budget


def batch_tokens_that_fit(config, free_bytes: int, *, dtype_bytes: int = 2, blocks: int | None = None,
                          lens: bool = True) -> int:
    """The most padded tokens per forward pass whose `forward_reserve_bytes` fits in `free_bytes` (what is left on a
    GPU once the weights are placed); 0 when not even one token fits. The reserve grows linearly with the tokens."""
    base = forward_reserve_bytes(config, 0, dtype_bytes=dtype_bytes, rows=1, blocks=blocks, lens=False)
    per_token = forward_reserve_bytes(config, 1 << 20, dtype_bytes=dtype_bytes, blocks=blocks, lens=lens) - base
    return max(0, int((free_bytes - base) * (1 << 20) // per_token))


def _zero3_loading() -> bool:
    """Whether a ZeRO-3 HfDeepSpeedConfig is alive: then from_pretrained partitions the weights itself."""
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:
        return False
    return is_deepspeed_zero3_enabled()


def load_model(spec: str, device: torch.device | str = "cpu", dtype: str | None = "auto",
               revision: str | None = None, device_map: str | None = None, reserved_batch_tokens: int | None = None):
    """Load a causal LM in eval mode. `device_map="auto"` shards layers over all visible GPUs, leaving room on each
    for a forward pass of `reserved_batch_tokens` (default DEFAULT_RESERVED_BATCH_TOKENS) padded tokens
    (`device_map_max_memory`). On a GPU the weights load to it directly, not through a host copy (eight ranks of a
    node would hold eight), except under ZeRO-3, whose loading partitions them."""
    from transformers import AutoModelForCausalLM

    spec, is_local = _resolve(spec)
    torch_dtype = parse_dtype(dtype, device)
    if is_local and (problem := _folder_problem(Path(spec), config=True, tokenizer=False, weights=True)):
        raise problem
    placement, max_memory = device_map, None
    if device_map == "auto" and torch.cuda.is_available():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(spec, revision=revision)
        max_memory = device_map_max_memory(config, reserved_batch_tokens or DEFAULT_RESERVED_BATCH_TOKENS,
                                           dtype_bytes=torch.tensor([], dtype=torch_dtype).element_size())
    elif device_map is None and torch.device(device).type == "cuda" and not _zero3_loading():
        device = torch.device(device)
        placement = {"": device if device.index is not None else torch.device("cuda", torch.cuda.current_device())}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec, revision=revision, dtype=torch_dtype, device_map=placement,
            **({"max_memory": max_memory} if max_memory is not None else {})
        )
    except Exception as err:  # OSError, ValueError (unknown model_type), KeyError, … from transformers
        _raise_load_error("model", spec, is_local, err)
        raise
    if placement is None:
        model.to(device)
    model.eval()
    return model


def answer_letter_token_ids(tokenizer) -> dict[str, int]:
    """Token id of each answer letter as the tokenizer writes it right after `Answer:`.

    For most BPE vocabularies that is the token for " A" (leading space), but not for all: the id is
    read off the tokenisation of the full string, and each letter must add exactly one token.
    """
    base = tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
    ids = {}
    for letter in ANSWER_LETTERS:
        full = tokenizer(f"{ANSWER_CUE} {letter}", add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise ModelLoadError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} does not write ' {letter}' after "
                f"'{ANSWER_CUE}' as a single token ({base} -> {full}); constrained accuracy needs one token per letter"
            )
        ids[letter] = full[-1]
    if len(set(ids.values())) != len(ids):
        raise ModelLoadError(f"answer letters share token ids: {ids}")
    return ids


def model_fingerprint(spec: str, revision: str | None = None) -> dict:
    """Identify the weights: hub id + revision, or a sha256 over a local folder's weight files."""
    spec_path = Path(spec).expanduser()
    if not spec_path.is_dir():
        return {"model_id": spec, "revision": revision or "main"}
    digest = hashlib.sha256()
    files = sorted(p for p in spec_path.iterdir() if p.suffix in (".safetensors", ".bin", ".json", ".model"))
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return {"model_id": str(spec_path), "weights_sha256": digest.hexdigest()}
