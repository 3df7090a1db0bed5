"""Model stage entry point: `python -m repgeom.models build …` builds and pre-trains the default model."""
from __future__ import annotations

import argparse
import json
import logging
import sys

import pandas as pd
import torch

from repgeom.io import atomic_path, write_parquet
from repgeom.logs import configure_logging
from repgeom.models.build import build_llama, pretrain, save_model, train_tokenizer

log = logging.getLogger("repgeom.models")


def cmd_build(args) -> None:
    params = json.loads(args.params_json)
    torch.manual_seed(params["seed"])
    with open(args.corpus) as handle:
        texts = json.load(handle)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repgeom.models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="train a tokenizer and a small Llama on the generated corpus")
    build.add_argument("--corpus", required=True)
    build.add_argument("--params-json", required=True)
    build.add_argument("--out", required=True)
    build.add_argument("--log-out", required=True)
    build.set_defaults(func=cmd_build)
    args = parser.parse_args(argv)
    configure_logging()
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
