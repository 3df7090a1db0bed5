"""Report stage entry point:
`python -m repgeom.plots {accuracy-table,lens-table,concat,variant-ari,figures,compare-models} …`.

`accuracy-table`, `lens-table` and `concat` write the report's tables (`repgeom.tables`); `variant-ari`, `figures`
and `compare-models` draw.

`figures` writes one model's figure set into --out-dir, always the same files (`FIGURE_NAMES`):

    id_gride.png  n_clusters.png  ari.png  label_overlap.png  data_overlap.png  probe.png  logit_lens.png
    local_id_steps.png  accuracy_table.png            (and each as .pdf with --pdf)

A figure with no data (e.g. `local_id_steps` and `data_overlap` in a run without fine-tuning) is still written,
saying "Nothing to show" and why. See `repgeom.plots.model_figures` for what each figure holds
(and `repgeom.plots.registry` for the set).

    python -m repgeom.plots figures --metrics results/metrics/all.parquet \
        --overlap results/metrics/overlap.parquet --accuracy results/tables/accuracy.csv \
        --lens results/tables/lens.csv --checkpoints lora=results/finetune/tiny-llama/lora/checkpoints.json \
        --settings-json '{"maxk": 100, "id_scale_index": 4}' --model tiny-llama \
        --out-dir results/figures/tiny-llama [--conditions 0shot 5shot …] [--pdf]

`compare-models` writes the figures across models into --out-dir (`COMPARISON_NAMES`: `models_ari_subject.png`,
`models_ari_letter.png`, `models_id_gride.png`, `models_lens_accuracy.png`): each metric against relative depth
(layer / number of blocks), a panel per condition, a line per model; `ft-{method}-last` names a method's last
checkpoint in each model:

    python -m repgeom.plots compare-models --metrics results/metrics/all.parquet --lens results/tables/lens.csv \
        --models llama-8b qwen-7b \
        --conditions 0shot 5shot ft-lora-last \
        --checkpoints llama-8b:lora=results/finetune/llama-8b/lora/checkpoints.json \
                      qwen-7b:lora=results/finetune/qwen-7b/lora/checkpoints.json \
        --settings-json '{"id_scale_index": 4}' --out-dir results/figures [--pdf]

Bad input (a missing file or column, an empty table, a model the tables do not hold, a condition a model lacks,
bad JSON) stops either command with one line naming the file and what is missing, and exit status 1.
"""
from __future__ import annotations

import argparse
import logging
import sys

from repgeom.errors import InputError, entry_point
from repgeom.io import atomic_path, read_parquet_table
from repgeom.plots import FIGURE_NAMES

__all__ = ["FIGURE_NAMES", "main"]

log = logging.getLogger("repgeom.plots")


def cmd_accuracy_table(args) -> None:
    from repgeom.tables import write_accuracy_table

    table = write_accuracy_table(args.inputs, args.out)
    log.info("accuracy per condition:\n%s", table.to_string(index=False))


def cmd_lens_table(args) -> None:
    from repgeom.tables import write_lens_table

    table = write_lens_table(args.inputs, args.out)
    log.info("logit lens: %d layers of %d conditions", len(table), table.groupby(["model", "condition"]).ngroups)


def cmd_concat(args) -> None:
    from repgeom.tables import write_concat

    table = write_concat(args.inputs, args.out)
    log.info("%d rows from %d tables", len(table), len(args.inputs))


def cmd_variant_ari(args) -> None:
    from repgeom.plots.variants_figure import plot_variant_ari

    with atomic_path(args.out) as tmp:
        conditions = plot_variant_ari(read_parquet_table(args.metrics, "metric table", InputError), args.model, args.shots,
                                      tmp)
    log.info("%s: ARI against layer for %s", args.out, ", ".join(conditions))


def cmd_figures(args) -> None:
    from repgeom.plots.inputs import (
        METRIC_COLUMNS,
        OVERLAP_COLUMNS,
        check_conditions,
        check_model,
        parse_settings,
        read_lens,
        read_table,
        steps_from_runs,
    )
    from repgeom.plots.model_figures import model_figures
    from repgeom.tables import ACCURACY_COLUMNS

    params = parse_settings(args.settings_json)
    steps = steps_from_runs(args.checkpoints)
    tables = {}
    for key, path, columns, what, condition_columns in (
        ("metrics", args.metrics, METRIC_COLUMNS, "metric table", ["condition"]),
        ("overlap", args.overlap, OVERLAP_COLUMNS, "overlap table", ["condition_a", "condition_b"]),
        ("accuracy", args.accuracy, ACCURACY_COLUMNS, "accuracy table", ["condition"]),
    ):
        table = read_table(path, columns, what)
        check_model(table, args.model, path, what)
        check_conditions(table, condition_columns, path, what)
        tables[key] = table
    if args.conditions:
        held = set(tables["metrics"].loc[tables["metrics"]["model"] == args.model, "condition"])
        missing = [c for c in args.conditions if c not in held]
        if missing:
            raise InputError(f"{args.metrics}: the metric table has no rows for condition(s) {', '.join(missing)} "
                             f"of model {args.model!r}")
    figures = model_figures(tables["metrics"], tables["overlap"], tables["accuracy"], args.model, steps, params,
                            conditions=args.conditions or None, lens=read_lens(args.lens))
    write_logged(figures, args.out_dir, args.pdf)


def cmd_compare_models(args) -> None:
    from repgeom.plots.comparison import comparison_figures
    from repgeom.plots.inputs import (
        METRIC_COLUMNS,
        check_conditions,
        check_model,
        parse_settings,
        read_lens,
        read_table,
        steps_by_model,
    )
    from repgeom.tables import with_lens_metrics

    params = parse_settings(args.settings_json)
    steps = steps_by_model(args.checkpoints, args.models)
    metrics = read_table(args.metrics, METRIC_COLUMNS, "metric table")
    check_conditions(metrics, ["condition"], args.metrics, "metric table")
    for model in args.models:
        check_model(metrics, model, args.metrics, "metric table")
    # The lens's metrics join the metric table's: its conditions are the ones the panels resolve.
    metrics = with_lens_metrics(metrics, read_lens(args.lens))
    tables = {model: metrics[metrics["model"] == model] for model in args.models}
    try:
        figures = comparison_figures(tables, args.conditions, steps, params)
    except InputError as err:  # a condition a model lacks: say which table lacks it
        raise InputError(f"{args.metrics}: {err}") from None
    write_logged(figures, args.out_dir, args.pdf)


def write_logged(figures: dict, out_dir: str, pdf: bool) -> None:
    """Write the figures (`parts.write_figures`), logging which were drawn and which have nothing to show."""
    from repgeom.plots.parts import write_figures

    for name, fig in figures.items():
        reason = getattr(fig, "nothing_to_show", None)
        log.info("%s: %s", name, f"nothing to show: {reason}" if reason else "drawn")
    written = write_figures(figures, out_dir, pdf=pdf)
    log.info("wrote %d files to %s", len(written), out_dir)


@entry_point("repgeom.plots")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repgeom.plots", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy-table", help="micro and macro accuracy per model and condition")
    acc.add_argument("--out", required=True)
    acc.add_argument("inputs", nargs="+")
    acc.set_defaults(func=cmd_accuracy_table)
    lens = sub.add_parser("lens-table", help="the logit lens per model, condition and layer")
    lens.add_argument("--out", required=True)
    lens.add_argument("inputs", nargs="+", help="the extract stage's {condition}.lens.parquet files")
    lens.set_defaults(func=cmd_lens_table)
    cat = sub.add_parser("concat", help="stack long-form metric tables into one")
    cat.add_argument("--out", required=True)
    cat.add_argument("inputs", nargs="+")
    cat.set_defaults(func=cmd_concat)
    var = sub.add_parser("variant-ari", help="subject and letter ARI against layer, plain k-shot vs its controls")
    var.add_argument("--metrics", required=True, help="merged metric table")
    var.add_argument("--model", required=True)
    var.add_argument("--shots", type=int, required=True)
    var.add_argument("--out", required=True, help="PNG file")
    var.set_defaults(func=cmd_variant_ari)
    # What both figure commands read and write.
    drawing = argparse.ArgumentParser(add_help=False)
    drawing.add_argument("--metrics", required=True, help="merged metric table (metrics/all.parquet)")
    drawing.add_argument("--lens", required=True, help="logit lens table (tables/lens.csv)")
    drawing.add_argument("--settings-json", required=True,
                         help="analysis parameters as JSON (or a JSON file): the config's analysis.params")
    drawing.add_argument("--out-dir", required=True)
    drawing.add_argument("--pdf", action="store_true", help="write each figure as PDF too")
    fig = sub.add_parser("figures", parents=[drawing],
                         help="one model's figure set (FIGURE_NAMES) as PNG, and PDF with --pdf")
    fig.add_argument("--overlap", required=True, help="merged overlap table (metrics/overlap.parquet)")
    fig.add_argument("--accuracy", required=True, help="accuracy table (tables/accuracy.csv)")
    fig.add_argument("--checkpoints", nargs="*", default=[], metavar="METHOD=FILE",
                     help="a training run's checkpoints.json ({checkpoint: step}) per fine-tuning method")
    fig.add_argument("--model", required=True)
    fig.add_argument("--conditions", nargs="*", help="only these conditions (default: every one in the tables)")
    fig.set_defaults(func=cmd_figures)
    cmp = sub.add_parser("compare-models", parents=[drawing],
                         help="the figures across models (COMPARISON_NAMES) as PNG, and PDF with --pdf")
    cmp.add_argument("--models", nargs="+", required=True, help="the models drawn, in this order (and colour)")
    cmp.add_argument("--conditions", nargs="+", required=True,
                     help="a panel each: conditions every model has, or ft-{method}-last (a method's last checkpoint)")
    cmp.add_argument("--checkpoints", nargs="*", default=[], metavar="MODEL:METHOD=FILE",
                     help="each model's training runs' checkpoints.json ({checkpoint: step}), for ft-{method}-last")
    cmp.set_defaults(func=cmd_compare_models)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
