"""Analysis entry point.

  python -m repgeom.analysis layers  --store S --group MODEL/CONDITION --layers 0-3 --params-json '{}' --out O.parquet
  python -m repgeom.analysis overlap --store S --groups M/C1 M/C2 ... --k 30 --out O.parquet

`layers` writes every per-layer metric (METRICS.md) in long form: model, condition, layer, metric,
scale, value, error, note. `overlap` writes the data overlap chi_k between every pair of conditions
at each layer and between consecutive layers of each condition: model, condition_a, condition_b,
layer_a, layer_b, metric, k, value, note. Each pair is compared on the rows distinct in both representations:
a row that is an exact duplicate of an earlier row in either is dropped from both (`note` counts them).
"""
from __future__ import annotations

import argparse
import itertools
import json
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

from repgeom.analysis.geometry import data_overlap  # noqa: E402
from repgeom.analysis.neighbors import duplicate_rows, knn  # noqa: E402
from repgeom.analysis.layer import AnalysisInputError, analyze_layer, token_local_id_rows, validate_representation  # noqa: E402
from repgeom.analysis.params import AnalysisParams  # noqa: E402
from repgeom.errors import entry_point  # noqa: E402
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
    try:
        return AnalysisParams.coerce(json.loads(text))
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
    frames = []
    for layer in tqdm(layers, desc=f"analysis {args.group}", unit="layer"):
        X, meta = _read_layer(args.store, args.group, layer)
        timings = {}
        rows = analyze_layer(X, meta, params, layer=layer, device=args.device, timings=timings)
        log.info("%s layer %d: %d x %d analysed in %.1f s (%s)", args.group, layer, *np.shape(X), sum(timings.values()),
                 ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in timings.items()))
        if layer in _token_sample_layers(args.store, args.group):
            tokens, _ = _read_token_sample(args.store, args.group, layer)
            rows += token_local_id_rows(tokens, params, layer=layer, device=args.device)
        frames.append(pd.DataFrame(rows).assign(layer=layer))
    table = pd.concat(frames, ignore_index=True).assign(model=args.model or model,
                                                        condition=args.condition or condition)
    table = table[LAYER_COLUMNS].astype({"model": "string", "condition": "string", "layer": "int64",
                                         "metric": "string", "scale": "Int64", "value": "float64",
                                         "error": "float64", "note": "string"})
    write_parquet(table, args.out)
    log.info("wrote %d metric rows for %d layers to %s", len(table), len(layers), args.out)


def aligned_to(question_ids: pd.Series, reference: pd.Series, where: str) -> np.ndarray:
    """Row order that puts this group's prompts in the reference group's order, or an error if the
    groups were not extracted from the same prompts."""
    if question_ids.duplicated().any():
        raise AnalysisInputError(f"{where}: question_id {question_ids[question_ids.duplicated()].iloc[0]!r} repeats")
    if set(question_ids) != set(reference):
        extra, lacking = set(question_ids) - set(reference), set(reference) - set(question_ids)
        raise AnalysisInputError(
            f"{where}: not the same prompts as the first group ({len(extra)} question ids only here, "
            f"{len(lacking)} only there, e.g. {sorted(map(str, extra or lacking))[:3]}): "
            "was this store extracted from a different prompt set?")
    position = pd.Index(question_ids)
    return position.get_indexer(reference)


class OverlapSide:
    """One representation (a condition at a layer, rows in the reference prompt order) for the data overlap.

    It knows its duplicate rows (`deduplicate`'s rule: exact copies of an earlier row) and gives its kNN on
    the rows a pair keeps. A pair drops, from both sides, every row that is a duplicate in either, so each
    side's kNN is taken on distinct rows, with no zero-distance ties. The kNN on the side's own distinct rows
    is computed at once (it serves every pair where the other side has no other duplicates: the usual case);
    the kNN on another subset is computed when asked, on X read again through `reload` (X is not kept).
    """

    def __init__(self, X: np.ndarray, k: int, device=None, reload=None):
        self.k, self.device, self._reload = k, device, reload
        self.duplicates = duplicate_rows(X)
        self.n_duplicates = int(self.duplicates.sum())
        self._knn = {}
        if len(X) - self.n_duplicates >= k + 1:
            self._knn[self._key(self.duplicates)] = knn(X[~self.duplicates], k, device=device)

    @staticmethod
    def _key(drop: np.ndarray) -> bytes:
        return np.flatnonzero(drop).tobytes()

    def knn_without(self, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dist, ind) of width k on the rows not in `drop`, indexed 0.. over those rows in order."""
        key = self._key(drop)
        if key not in self._knn:
            if self._reload is None:
                raise ValueError("this side keeps no representation to recompute its kNN on other rows")
            self._knn[key] = knn(self._reload()[~drop], self.k, device=self.device)
        return self._knn[key]


def pair_overlap(side_a: OverlapSide, side_b: OverlapSide, k: int) -> tuple[float, int, str]:
    """(chi_k, rows dropped, note) between two representations of the same rows, on the rows distinct in both:
    a row that is a duplicate in either side (a copy of an earlier row there) is dropped from both."""
    if len(side_a.duplicates) != len(side_b.duplicates):
        raise ValueError(f"data overlap needs the same rows: {len(side_a.duplicates)} against {len(side_b.duplicates)}")
    drop = side_a.duplicates | side_b.duplicates
    n_dropped = int(drop.sum())
    n_kept = len(drop) - n_dropped
    counts = f"duplicates: {side_a.n_duplicates} in A, {side_b.n_duplicates} in B"
    if n_kept < k + 1:
        return float("nan"), n_dropped, f"only {n_kept} distinct rows in both ({counts}), need k + 1 = {k + 1}"
    value = data_overlap(side_a.knn_without(drop), side_b.knn_without(drop), k)
    note = f"{n_dropped} rows dropped from both, duplicates in A or B ({counts}); {n_kept} rows used" if n_dropped else ""
    return value, n_dropped, note


def data_overlap_distinct(A: np.ndarray, B: np.ndarray, k: int, device=None) -> tuple[float, int, str]:
    """chi_k between representations A and B of the same rows, on the rows distinct in both (`pair_overlap`)."""
    return pair_overlap(OverlapSide(A, k, device, reload=lambda: A), OverlapSide(B, k, device, reload=lambda: B), k)


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
    reference = None

    def aligned(group: str, layer: int) -> np.ndarray:
        """The layer's representation with its rows in the first group's prompt order."""
        nonlocal reference
        where = f"{group} layer {layer}"
        X, meta = _read_layer(args.store, group, layer)
        if reference is None:
            reference = meta["question_id"].reset_index(drop=True)
        X = validate_representation(X, where)
        if len(meta) != len(X):
            raise AnalysisInputError(f"{where}: {len(meta)} metadata rows for {len(X)} representation rows")
        return X[aligned_to(meta["question_id"], reference, where)]

    rows, previous = [], None
    for layer in tqdm(layers, desc="data overlap", unit="layer"):
        current = {}
        for group, _, condition in groups:
            current[condition] = OverlapSide(aligned(group, layer), args.k, args.device,
                                             reload=lambda group=group, layer=layer: aligned(group, layer))
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
    common.add_argument("--device", default=None, help="torch device for the kNN (default: cuda if present)")
    common.add_argument("--threads", type=int, default=None, help="CPU threads for torch and BLAS")
    common.add_argument("--log", default=None, help="also write the log to this file")

    lay = sub.add_parser("layers", parents=[common], help="every per-layer metric of one model/condition")
    lay.add_argument("--group", required=True, help="MODEL/CONDITION in the store")
    lay.add_argument("--params-json", default="{}", help="analysis parameters overriding the defaults")
    lay.add_argument("--model", default=None, help="model column (default: from --group)")
    lay.add_argument("--condition", default=None, help="condition column (default: from --group)")
    lay.set_defaults(func=cmd_layers)

    ovl = sub.add_parser("overlap", parents=[common], help="data overlap between conditions and layers")
    ovl.add_argument("--groups", nargs="+", required=True, help="MODEL/CONDITION ... (one model)")
    ovl.add_argument("--k", type=int, default=AnalysisParams.overlap_k)
    ovl.set_defaults(func=cmd_overlap)

    args = parser.parse_args(argv)
    configure_logging(args.log)
    if args.threads:
        torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
