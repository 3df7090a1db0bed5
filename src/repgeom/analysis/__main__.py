"""Analysis entry point.

  python -m repgeom.analysis layers  --store S --group MODEL/CONDITION --layers 0-3 --params-json '{}' --out O.parquet
                                     [--neighbors-out N.zarr]
  python -m repgeom.analysis overlap --store S --groups M/C1 M/C2 ... --neighbors N1.zarr N2.zarr ... --k 30
                                     --out O.parquet

`layers` writes every per-layer metric (METRICS.md) in long form: model, condition, layer, metric,
scale, value, error, note; with --neighbors-out also each layer's neighbours (neighbor_artifact.py). `overlap`
reads those and writes the data overlap chi_k between every pair of conditions at each layer and between
consecutive layers of each condition: model, condition_a, condition_b, layer_a, layer_b, metric, k, value, note.
Each pair is compared on the rows distinct in both representations: a row that is an exact duplicate of an
earlier row in either is dropped from both (`note` counts them).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import sys

# torch and sklearn each bring an OpenMP runtime; with the default active wait policy the idle threads of one
# spin on the cores the other needs (the kNN ran 2x slower after a sklearn call). Set before torch is imported;
# an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from tqdm import tqdm  # noqa: E402

from repgeom.analysis.layer import AnalysisInputError, layer_analysis, token_local_id_rows, validate_representation  # noqa: E402
from repgeom.analysis.memory import keep_freed_memory  # noqa: E402
from repgeom.analysis.neighbor_artifact import NeighborArtifact, NeighborArtifactError, writing_artifact  # noqa: E402
from repgeom.analysis.neighbors import resolve_device  # noqa: E402
from repgeom.analysis.overlap import OverlapSide, aligned_to, pair_overlap  # noqa: E402
from repgeom.analysis.params import AnalysisParams  # noqa: E402
from repgeom.errors import entry_point, json_option  # noqa: E402
from repgeom.io import write_parquet  # noqa: E402
from repgeom.logs import configure_logging  # noqa: E402

log = logging.getLogger("repgeom.analysis")

LAYER_COLUMNS = ["model", "condition", "layer", "metric", "scale", "value", "error", "note"]
OVERLAP_COLUMNS = ["model", "condition_a", "condition_b", "layer_a", "layer_b", "metric", "k", "value", "note"]


def _read_layer(store: str, group: str, layer: int) -> tuple[np.ndarray, pd.DataFrame]:
    # Imported late: the store module is written separately and only needed once a layer is read.
    from repgeom import store as activation_store
    return activation_store.read_layer(store, group, layer)


def _n_layers(store: str, group: str) -> int:
    from repgeom import store as activation_store
    return activation_store.n_layers(store, group)


def _token_sample_layers(store: str, group: str) -> list[int]:
    """Layers with an all-token sample (the extraction's --token-sample-layers), as store layer indices."""
    from repgeom import store as activation_store
    sample = activation_store.group_attrs(store, group).get("token_sample") or {}
    return sample.get("layers", [])


def _read_token_sample(store: str, group: str, layer: int) -> tuple[np.ndarray, pd.DataFrame]:
    from repgeom import store as activation_store
    return activation_store.read_token_sample(store, group, layer)


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """'all', '0-3' (inclusive), '0,1,2' or a mix such as '0-3,7': sorted, unique, checked against n_layers."""
    if spec.strip() == "all":
        return list(range(n_layers))
    layers = set()
    try:
        for part in spec.split(","):
            first, _, last = part.strip().partition("-")
            layers.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise AnalysisInputError(f"--layers {spec!r}: expected 'all', 'A-B' or 'A,B,...' with integers") from None
    outside = sorted(layer for layer in layers if not 0 <= layer < n_layers)
    if not layers or outside:
        raise AnalysisInputError(f"--layers {spec!r}: layers {outside} not in the store (it has 0-{n_layers - 1})")
    return sorted(layers)


def parse_params(text: str) -> AnalysisParams:
    params = json_option(text, "--params-json", AnalysisInputError)
    try:
        return AnalysisParams.coerce(params)
    except (ValueError, TypeError) as err:
        raise AnalysisInputError(f"--params-json: {err}") from None


def split_group(group: str) -> tuple[str, str]:
    model, sep, condition = group.rpartition("/")
    if not sep or not model or not condition:
        raise AnalysisInputError(f"group {group!r}: expected MODEL/CONDITION")
    return model, condition


def cmd_layers(args) -> None:
    params = parse_params(args.params_json)
    model, condition = split_group(args.group)
    layers = parse_layers(args.layers, _n_layers(args.store, args.group))
    token_layers = _token_sample_layers(args.store, args.group)
    frames = []
    with contextlib.ExitStack() as artifact:
        keep_neighbors = None
        for layer in tqdm(layers, desc=f"analysis {args.group}", unit="layer"):
            X, meta = _read_layer(args.store, args.group, layer)
            timings = {}
            result = layer_analysis(X, meta, params, layer=layer, device=args.device, timings=timings)
            log.info("%s layer %d: %d x %d analysed in %.2f s (%s)", args.group, layer, *np.shape(X),
                     sum(timings.values()), ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in timings.items()))
            rows = result.rows
            if layer in token_layers:
                tokens, _ = _read_token_sample(args.store, args.group, layer)
                rows += token_local_id_rows(tokens, params, layer=layer, device=args.device)
            frames.append(pd.DataFrame(rows).assign(layer=layer))
            if args.neighbors_out:
                if keep_neighbors is None:  # the group's prompts are known once its first layer is read
                    keep_neighbors = artifact.enter_context(writing_artifact(
                        args.neighbors_out, group=args.group, layers=layers, question_ids=meta["question_id"],
                        kept_neighbors=params.kept_neighbors))
                keep_neighbors(layer, result.neighbors)
        table = pd.concat(frames, ignore_index=True).assign(model=args.model or model,
                                                            condition=args.condition or condition)
        table = table[LAYER_COLUMNS].astype({"model": "string", "condition": "string", "layer": "int64",
                                             "metric": "string", "scale": "Int64", "value": "float64",
                                             "error": "float64", "note": "string"})
        write_parquet(table, args.out)
    log.info("wrote %d metric rows for %d layers to %s%s", len(table), len(layers), args.out,
             f" and their neighbours to {args.neighbors_out}" if args.neighbors_out else "")


def neighbor_artifacts(paths: list[str], groups: list[str], layers: list[int],
                       k: int) -> dict[str, dict[int, NeighborArtifact]]:
    """group -> layer -> the artifact holding it, for every group and layer asked; an error names what is missing."""
    found = {group: {} for group in groups}
    for path in paths:
        artifact = NeighborArtifact(path)
        if artifact.group not in found:
            raise NeighborArtifactError(f"neighbour artifact {path!r} is for {artifact.group}, not one of --groups")
        if artifact.kept_neighbors < k:
            raise NeighborArtifactError(f"neighbour artifact {path!r} keeps {artifact.kept_neighbors} neighbours per "
                                        f"point, fewer than --k {k}: analyse with overlap_k >= {k}")
        for layer in artifact.layers:
            if layer in found[artifact.group]:
                raise NeighborArtifactError(f"layer {layer} of {artifact.group} is in two neighbour artifacts: "
                                            f"{str(found[artifact.group][layer].path)!r} and {path!r}")
            found[artifact.group][layer] = artifact
    for group, by_layer in found.items():
        if missing := sorted(set(layers) - set(by_layer)):
            raise NeighborArtifactError(f"no neighbour artifact among --neighbors holds layers {missing} of {group}")
    return found


def cmd_overlap(args) -> None:
    groups = [(g, *split_group(g)) for g in args.groups]
    models = sorted({model for _, model, _ in groups})
    if len(models) != 1:
        raise AnalysisInputError(f"overlap compares conditions of one model; --groups span models {models}")
    if len({condition for _, _, condition in groups}) != len(groups):
        raise AnalysisInputError(f"--groups repeats a condition: {args.groups}")
    counts = {g: _n_layers(args.store, g) for g, _, _ in groups}
    if len(set(counts.values())) != 1:
        raise AnalysisInputError(f"groups have different numbers of layers: {counts}")
    layers = parse_layers(args.layers, next(iter(counts.values())))
    artifacts = neighbor_artifacts(args.neighbors, args.groups, layers, args.k)
    reference = artifacts[args.groups[0]][layers[0]].question_ids
    orders = {}  # group -> reference position -> its row (None: the reference order)
    for group, by_layer in artifacts.items():
        for artifact in {id(a): a for a in by_layer.values()}.values():
            order = aligned_to(artifact.question_ids, reference, f"{group} (neighbour artifact {str(artifact.path)!r})")
            orders[group] = None if (order == np.arange(len(order))).all() else order

    def aligned(group: str, layer: int) -> np.ndarray:
        """The layer's representation from the store, rows in the reference prompt order (for pairs the stored
        neighbours cannot serve)."""
        where = f"{group} layer {layer}"
        X, meta = _read_layer(args.store, group, layer)
        X = validate_representation(X, where)
        if len(meta) != len(X):
            raise AnalysisInputError(f"{where}: {len(meta)} metadata rows for {len(X)} representation rows")
        return X[aligned_to(meta["question_id"], reference, where)]

    rows, previous = [], None
    for layer in tqdm(layers, desc="data overlap", unit="layer"):
        current = {condition: OverlapSide(artifacts[group][layer].layer(layer), args.k, orders[group],
                                          reload=lambda group=group, layer=layer: aligned(group, layer),
                                          device=args.device)
                   for group, _, condition in groups}
        pairs = [(a, b, layer, layer, current[a], current[b]) for a, b in itertools.combinations(current, 2)]
        if previous is not None:
            pairs += [(c, c, previous[0], layer, previous[1][c], current[c]) for c in current]
        for cond_a, cond_b, layer_a, layer_b, side_a, side_b in pairs:
            value, n_dropped, note = pair_overlap(side_a, side_b, args.k)
            if n_dropped:
                log.info("%s layer %d vs %s layer %d: %s", cond_a, layer_a, cond_b, layer_b, note)
            rows.append({"model": models[0], "condition_a": cond_a, "condition_b": cond_b, "layer_a": layer_a,
                         "layer_b": layer_b, "metric": "data_overlap", "k": args.k,
                         "value": value, "note": note})
        previous = (layer, current)
    table = pd.DataFrame(rows, columns=OVERLAP_COLUMNS).astype(
        {"model": "string", "condition_a": "string", "condition_b": "string", "layer_a": "int64",
         "layer_b": "int64", "metric": "string", "k": "int64", "value": "float64", "note": "string"})
    write_parquet(table, args.out)
    log.info("wrote %d overlap rows (%d groups, %d layers) to %s", len(table), len(groups), len(layers), args.out)


@entry_point("repgeom.analysis")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repgeom.analysis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", required=True, help="activation store path")
    common.add_argument("--layers", default="all", help="'all' (default), 'A-B' or 'A,B,...'")
    common.add_argument("--out", required=True, help="output parquet (written atomically)")
    common.add_argument("--device", default=None,
                        help="torch device of the kNN: cpu, cuda or cuda:N (default: the job's GPUs, from REPGEOM_JOB_GPUS "
                             "or SLURM_GPUS_ON_NODE, else cuda if present); the workflow passes the job's")
    common.add_argument("--threads", type=int, default=None, help="CPU threads for torch and BLAS")
    common.add_argument("--log", default=None, help="also write the log to this file")

    lay = sub.add_parser("layers", parents=[common], help="every per-layer metric of one model/condition")
    lay.add_argument("--group", required=True, help="MODEL/CONDITION in the store")
    lay.add_argument("--params-json", default="{}", help="analysis parameters overriding the defaults")
    lay.add_argument("--model", default=None, help="model column (default: from --group)")
    lay.add_argument("--condition", default=None, help="condition column (default: from --group)")
    lay.add_argument("--neighbors-out", default=None,
                     help="also keep each layer's neighbours in this zarr folder (written atomically), for `overlap`")
    lay.set_defaults(func=cmd_layers)

    ovl = sub.add_parser("overlap", parents=[common], help="data overlap between conditions and layers")
    ovl.add_argument("--groups", nargs="+", required=True, help="MODEL/CONDITION ... (one model)")
    ovl.add_argument("--neighbors", nargs="+", required=True,
                     help="the groups' neighbour artifacts (`layers --neighbors-out`), covering every layer asked")
    ovl.add_argument("--k", type=int, default=AnalysisParams.overlap_k)
    ovl.set_defaults(func=cmd_overlap)

    args = parser.parse_args(argv)
    configure_logging(args.log)
    args.device = str(resolve_device(args.device))  # a GPU given but unusable stops here, before any layer is read
    if args.threads:
        torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        args.func(args)
    return 0


if __name__ == "__main__":
    keep_freed_memory()  # a process setting, so here and not in main(), which tests call in-process
    sys.exit(main())
