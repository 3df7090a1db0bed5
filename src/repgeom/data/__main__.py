"""Data stage entry point: `python -m repgeom.data {generate,sample,prompts} …`."""
from __future__ import annotations

import argparse
import json
import logging
import sys

import pandas as pd

from repgeom.data import mmlu, prompts, sampling, synthetic, variants
from repgeom.io import write_parquet
from repgeom.logs import configure_logging

log = logging.getLogger("repgeom.data")


def cmd_generate(args) -> None:
    summary = synthetic.generate(args.out, **json.loads(args.params_json))
    log.info("generated dataset in %s: %s", args.out, summary)


def cmd_sample(args) -> None:
    table = mmlu.load_dataset_table(json.loads(args.dataset_json))
    subset = sampling.analysis_subset(table, args.max_per_subject, args.seed)
    # Validation rows that `sampled_shots` may use as shots stay out of the fine-tuning set.
    held_out = variants.sampled_shots_pool_ids(table, args.seed) if args.hold_out_shot_pool else []
    finetune = sampling.finetune_set(table, args.finetune_max_per_subject, args.seed, exclude_ids=held_out)
    write_parquet(table, args.questions_out)
    write_parquet(subset, args.subset_out)
    write_parquet(finetune, args.finetune_out)
    counts = table.groupby("split").size().to_dict()
    log.info("dataset: %s rows per split, %d subjects", counts, table["subject"].nunique())
    log.info("analysis subset: %d questions; fine-tuning set: %d rows (%d validation rows held out for "
             "sampled_shots)", len(subset), len(finetune), len(held_out))


def cmd_prompts(args) -> None:
    from repgeom.models.loading import load_tokenizer

    table = pd.read_parquet(args.questions)
    subset = pd.read_parquet(args.subset)
    if args.variant:
        areas = variants.load_subject_areas(args.subject_areas)
        texts = variants.variant_prompts(table, subset, args.shots, args.variant, args.seed, areas)
    else:
        shots = prompts.dev_shots(table, args.shots)
        texts = [prompts.k_shot_prompt(row, shots[row["subject"]]) for _, row in subset.iterrows()]
    frame = pd.DataFrame({
        "question_id": subset["question_id"], "subject": subset["subject"], "gold": subset["answer"],
        "n_shots": pd.array([args.shots] * len(subset), dtype="int64"), "prompt": texts,
    })
    frame = prompts.tokenize_prompts(frame, load_tokenizer(args.tokenizer), args.max_length)
    if args.variant:
        frame["variant"] = args.variant
        frame["variant_seed"] = pd.array([args.seed] * len(frame), dtype="int64")
    write_parquet(frame, args.out)
    log.info("%d-shot%s: %d prompts, %d truncated to %d tokens, tokens min/median/max = %d/%d/%d",
             args.shots, f" {args.variant}" if args.variant else "", len(frame), int(frame["truncated"].sum()), args.max_length,
             frame["n_tokens"].min(), frame["n_tokens"].median(), frame["n_tokens"].max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repgeom.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write the synthetic MMLU-format dataset and corpus")
    gen.add_argument("--out", required=True)
    gen.add_argument("--params-json", required=True)
    gen.set_defaults(func=cmd_generate)

    smp = sub.add_parser("sample", help="load the dataset, draw the analysis subset and the fine-tuning set")
    smp.add_argument("--dataset-json", required=True, help="the config's dataset section")
    smp.add_argument("--max-per-subject", type=int, required=True)
    smp.add_argument("--finetune-max-per-subject", type=int, required=True)
    smp.add_argument("--seed", type=int, required=True)
    smp.add_argument("--hold-out-shot-pool", action="store_true",
                     help="keep the sampled_shots variant's validation rows out of the fine-tuning set")
    smp.add_argument("--questions-out", required=True)
    smp.add_argument("--subset-out", required=True)
    smp.add_argument("--finetune-out", required=True)
    smp.set_defaults(func=cmd_sample)

    prm = sub.add_parser("prompts", help="k-shot prompts for the analysis subset")
    prm.add_argument("--questions", required=True)
    prm.add_argument("--subset", required=True)
    prm.add_argument("--shots", type=int, required=True)
    prm.add_argument("--tokenizer", required=True, help="hub id or model folder")
    prm.add_argument("--max-length", type=int, required=True)
    prm.add_argument("--variant", choices=sorted(variants.VARIANTS), help="a prompt control (default: plain)")
    prm.add_argument("--seed", type=int, default=0, help="seed of the variant's random draws")
    prm.add_argument("--subject-areas", help="JSON subject -> STEM/non-STEM (default: the 57 MMLU subjects)")
    prm.add_argument("--out", required=True)
    prm.set_defaults(func=cmd_prompts)

    args = parser.parse_args(argv)
    configure_logging()
    try:
        args.func(args)
    except (mmlu.DatasetError, OSError, ValueError) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
