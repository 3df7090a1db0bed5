"""Data stage entry point: `python -m repgeom.data {generate,sample,prompts} …`."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from repgeom.data import facts, mmlu, prompts, sampling, synthetic, variants
from repgeom.errors import InputError, entry_point, json_option
from repgeom.io import read_parquet_table, write_parquet

log = logging.getLogger("repgeom.data")


GENERATORS = {"facts": facts.generate, "invented": synthetic.generate}


def cmd_generate(args) -> None:
    params = json_option(args.params_json, "--params-json")
    kind = params.pop("kind", None)
    if kind not in GENERATORS:
        raise InputError(f"--params-json: kind {kind!r} is not one of {', '.join(GENERATORS)}")
    summary = GENERATORS[kind](args.out, **params)
    log.info("generated dataset in %s: %s", args.out, summary)


def cmd_sample(args) -> None:
    table = mmlu.load_dataset_table(json_option(args.dataset_json, "--dataset-json"))
    subset = sampling.analysis_subset(table, args.max_per_subject, args.seed, args.subset_mask)
    # Validation rows that `sampled_shots` may use as shots stay out of the fine-tuning set.
    held_out = variants.sampled_shots_pool_ids(table, args.seed) if args.hold_out_shot_pool else []
    finetune = sampling.finetune_set(table, args.finetune_max_per_subject, args.seed, exclude_ids=held_out)
    write_parquet(table, args.questions_out)
    write_parquet(subset, args.subset_out)
    write_parquet(finetune, args.finetune_out)
    counts = table.groupby("split").size().to_dict()
    log.info("dataset: %s rows per split, %d subjects", counts, table["subject"].nunique())
    log.info("analysis subset: %d questions (%s); fine-tuning set: %d rows (%d validation rows held out for "
             "sampled_shots)", len(subset), f"selected by {args.subset_mask}" if args.subset_mask else
             f"at most {args.max_per_subject} per subject", len(finetune), len(held_out))


def dev_rows_source(questions: str):
    """For errors about dev rows: a function of the subject naming the questions file the rows were read from
    and, when its provenance record says, the dataset it was made from (and the subject's dev CSV there)."""
    dataset = {}
    try:
        from repgeom.provenance.records import read_record

        dataset = (read_record(questions) or {}).get("dataset") or {}
    except Exception:  # no usable record: the questions file alone is named
        dataset = {}
    dataset = dataset if isinstance(dataset, dict) else {}

    def source(subject: str) -> str:
        text = f"questions file {str(questions)!r}"
        if dataset.get("path"):
            folder = Path(str(dataset["path"])).expanduser()
            dev_csv = folder / mmlu.CSV_SPLIT_NAMES["dev"] / f"{subject}_{mmlu.CSV_SPLIT_NAMES['dev']}.csv"
            text += f" (made from dataset {str(folder)!r}" + (f", dev rows in {str(dev_csv)!r})" if dev_csv.is_file()
                                                               else ")")
        elif dataset.get("id"):
            revision = f" revision {dataset['revision']!r}" if dataset.get("revision") else ""
            text += f" (made from hub dataset {dataset['id']!r}{revision})"
        return text

    return source


def cmd_prompts(args) -> None:
    from repgeom.models.loading import ModelLoadError, load_tokenizer

    try:
        tokenizer = load_tokenizer(args.tokenizer)
    except ModelLoadError as err:
        raise ModelLoadError(f"--tokenizer: {err}") from err
    table = read_parquet_table(args.questions, "questions file", mmlu.DatasetError)
    subset = read_parquet_table(args.subset, "analysis subset file", mmlu.DatasetError)
    if args.variant:
        areas = variants.load_subject_areas(args.subject_areas)
        texts = variants.variant_prompts(table, subset, args.shots, args.variant, args.seed, areas)
    else:
        shots = prompts.dev_shots(table, args.shots, source=dev_rows_source(args.questions))
        texts = [prompts.k_shot_prompt(row, shots[row["subject"]]) for _, row in subset.iterrows()]
    frame = pd.DataFrame({
        "question_id": subset["question_id"], "subject": subset["subject"], "gold": subset["answer"],
        "n_shots": pd.array([args.shots] * len(subset), dtype="int64"), "prompt": texts,
    })
    frame = prompts.tokenize_prompts(frame, tokenizer, args.max_length)
    if args.variant:
        frame["variant"] = args.variant
        frame["variant_seed"] = pd.array([args.seed] * len(frame), dtype="int64")
    write_parquet(frame, args.out)
    log.info("%d-shot%s: %d prompts, %d truncated to %d tokens, tokens min/median/max = %d/%d/%d",
             args.shots, f" {args.variant}" if args.variant else "", len(frame), int(frame["truncated"].sum()), args.max_length,
             frame["n_tokens"].min(), frame["n_tokens"].median(), frame["n_tokens"].max())


@entry_point("repgeom.data")
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
    smp.add_argument("--subset-mask", metavar="NPY",
                     help="boolean .npy mask over the test split, in its order: the analysis subset is the rows it "
                          "selects, instead of the seeded draw of --max-per-subject per subject")
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
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
