"""Per-layer analysis wall time: the reference's DADApy-only path against this project's, on one run.

  python benchmarks/analysis_speed.py                     # N = 10,000, D = 4096 (docs/design.md §11)
  python benchmarks/analysis_speed.py --n 4000 --d 1024   # quicker
  python benchmarks/analysis_speed.py --n 9181 --threads 16 --no-project-cpu --small-n 0   # benchmarks/gpu_check.sh

Counted per condition and layer, as the workflow runs them:
(a) reference: `Data(X)`, `compute_distances(maxk)` (sklearn brute force), Gride, TwoNN, kNN density,
    ADP without and with halo, label overlaps; and the data overlap with a second representation Y of
    the same points, computed as the reference does (DADApy's k-NN of both sides, k = 30).
(b) this project on the CPU: `layer_analysis` (exact kNN fed to the same DADApy calls, plus local ID and
    linear probes, which the reference path does not have) and the overlap as the `overlap` command computes
    it: from the neighbours X's analysis kept and those Y's own analysis kept (Y's are computed outside the
    timing: they belong to Y's condition and layer).
(c) the same on the GPU, when there is one (`--gpu-device cpu` runs this arm on the CPU: the check's dry run).
Results must agree: every metric of (b) and (c) equal to (a)'s (IDs to 1e-6 relative, since the distances may
differ from sklearn's in the last bits; the rest exactly).

The machine's matmul rate is measured in the same run, as the time of one float32 Gram-sized product X Y^T of the
layer (2 N^2 D FLOP; Y, not X, so that no BLAS halves it as a symmetric product): in numpy, whose BLAS the kNN's
CPU GEMMs (and sklearn's) use, and in torch (MKL). The kNN's time is given against both. And a small layer at the
default's scale (N = 600, D = 576, config/config.yaml's analysis parameters): its whole analysis, once the process
has started (the start-up, paid once per job for all its layers, is given apart). Prints a table and writes a
JSON. The latest numbers, with the machine and commit: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

# As repgeom.analysis does, before any OpenMP runtime loads (both paths profit from it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from dadapy import Data  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from repgeom.analysis.layer import layer_analysis  # noqa: E402
from repgeom.analysis.memory import keep_freed_memory  # noqa: E402
from repgeom.analysis.neighbor_artifact import layer_neighbors  # noqa: E402
from repgeom.analysis.overlap import OverlapSide, pair_overlap  # noqa: E402
from repgeom.analysis.params import AnalysisParams  # noqa: E402
from repgeom.provenance.records import short_commit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Stages of (b) that the reference path also has; local_id and probes are extra metrics.
SHARED_STAGES = ("prepare", "knn", "id", "density_adp", "label_overlap", "overlap")


def synthetic_layer(n: int, d: int, n_subjects: int, seed: int):
    """LLM-like float32 representations: one low-dimensional blob per subject (8-d, in its own random
    subspace) on a large common offset, plus isotropic noise; a second "next layer" representation;
    random answer letters."""
    rng = np.random.default_rng(seed)
    subject = rng.integers(0, n_subjects, n)
    offset = 20 * rng.standard_normal(d)
    X = offset + 1.5 * rng.standard_normal((n_subjects, d))[subject]
    for s in range(n_subjects):
        rows = np.flatnonzero(subject == s)
        X[rows] += rng.standard_normal((len(rows), 8)) @ rng.standard_normal((8, d))
    X += 0.3 * rng.standard_normal((n, d))
    Y = X + 2.0 * rng.standard_normal((n, d))
    labels = pd.DataFrame({"subject": [f"subject_{s}" for s in subject], "gold": rng.choice(list("ABCD"), n)})
    return X.astype(np.float32), Y.astype(np.float32), labels


def timed(timings: dict, stage: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
    return out


def gram_seconds(X: np.ndarray, Y: np.ndarray, library: str, device: str = "cpu") -> float:
    """Wall time of the float32 product X Y^T, a Gram matrix's work, in numpy or in torch (on `device`)."""
    if library == "numpy":
        start = time.perf_counter()
        np.matmul(X, Y.T)
        return time.perf_counter() - start
    x, y = torch.from_numpy(X).to(device), torch.from_numpy(Y).to(device)
    start = time.perf_counter()
    x @ y.T
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def reference_path(X, Y, labels, p: AnalysisParams) -> tuple[dict, dict]:
    """(a): the DADApy-only path, stage by stage."""
    t = {}
    data = timed(t, "prepare", Data, coordinates=X.astype(np.float64), verbose=False)
    timed(t, "knn", data.compute_distances, maxk=p.maxk)
    ids, errs, _ = timed(t, "id", data.return_id_scaling_gride, range_max=p.range_max, return_ranks=True)
    twonn = timed(t, "id", data.compute_id_2NN, set_attr=False)[0]
    start = time.perf_counter()
    data.set_id(ids[p.id_scale_index])
    data.compute_density_kNN(k=p.density_k)
    clusters = data.compute_clustering_ADP(Z=p.Z, halo=False).copy()
    n_clusters = data.N_clusters
    with_halo = data.compute_clustering_ADP(Z=p.Z, halo=True)
    t["density_adp"] = time.perf_counter() - start
    out = {"id_gride": ids, "id_gride_err": errs, "id_twonn": twonn, "n_clusters": n_clusters,
           "core_fraction": float(np.mean(with_halo >= 0))}
    for col, name in (("subject", "subject"), ("gold", "letter")):
        out[f"ari_{name}"] = adjusted_rand_score(labels[col], clusters)
        codes = pd.factorize(labels[col])[0]
        out[f"label_overlap_{name}"] = timed(t, "label_overlap", data.return_label_overlap, codes,
                                             class_fraction=p.class_fraction)
    out["data_overlap"] = timed(t, "overlap", reference_overlap, X, Y, p.overlap_k)
    return out, t


def reference_overlap(X, Y, k):
    """One pair of the overlap, as the reference computes it: both sides' k-NN from scratch."""
    data = Data(coordinates=X.astype(np.float64), verbose=False)
    data.compute_distances(maxk=k)
    return data.return_data_overlap(coordinates=Y.astype(np.float64), k=k)


def project_path(X, labels, y_neighbors, p: AnalysisParams, device: str) -> tuple[dict, dict]:
    """(b)/(c): layer_analysis, plus the overlap from the neighbours it kept and those Y's analysis kept."""
    t = {}
    result = layer_analysis(X, labels, p, device=device, timings=t)
    rows = pd.DataFrame(result.rows)
    gride = rows[rows.metric == "id_gride"]
    out = {"id_gride": gride["value"].to_numpy(), "id_gride_err": gride["error"].to_numpy()}
    out.update({m: v for m, v in zip(rows.metric, rows.value) if m != "id_gride"})
    sides = (OverlapSide(result.neighbors, p.overlap_k), OverlapSide(y_neighbors, p.overlap_k))
    out["data_overlap"] = timed(t, "overlap", pair_overlap, *sides, p.overlap_k)[0]
    return out, t


def differences(ref: dict, got: dict) -> list[str]:
    """Metrics where got differs from ref: IDs beyond 1e-6 relative, anything else at all."""
    bad = []
    for key, expected in ref.items():
        value = np.asarray(got[key], dtype=float)
        close = np.allclose(value, expected, rtol=1e-6, atol=0) if key.startswith("id_") else np.array_equal(value, expected)
        if not close:
            bad.append(f"{key}: {expected} vs {got[key]}")
    return bad


def small_layer(n: int, d: int, repeats: int, seed: int) -> dict:
    """The whole analysis of a default-scale layer in a warm process (fastest of `repeats`), and the start-up of
    a fresh `python -m repgeom.analysis` process, which a job pays once for all its layers."""
    params = AnalysisParams(**yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["analysis"]["params"])
    X, _, labels = synthetic_layer(n, d, 6, seed)
    layer_analysis(X, labels, params, device="cpu")  # the first call in a process warms caches and lazy imports
    best, stages = float("inf"), {}
    for _ in range(repeats):
        t = {}
        start = time.perf_counter()
        layer_analysis(X, labels, params, device="cpu", timings=t)
        seconds = time.perf_counter() - start
        if seconds < best:
            best, stages = seconds, t
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import repgeom.analysis.__main__"], check=True)
    return {"n": n, "d": d, "params": "config/config.yaml", "layer_s": best, "stages_s": stages,
            "process_start_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--maxk", type=int, default=1000)
    parser.add_argument("--subjects", type=int, default=57)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs of each path; the fastest is kept")
    parser.add_argument("--small-n", type=int, default=600, help="points of the default-scale layer")
    parser.add_argument("--small-d", type=int, default=576, help="width of the default-scale layer")
    parser.add_argument("--no-gpu", action="store_true", help="skip (c) even when a GPU is present")
    parser.add_argument("--gpu-device", default="cuda", help="device of (c) (default cuda; cpu: the dry run)")
    parser.add_argument("--no-project-cpu", action="store_true", help="skip (b), this project on the CPU")
    parser.add_argument("--out", default="benchmarks/results/analysis_speed.json")
    args = parser.parse_args()
    keep_freed_memory()  # as the analysis entry point does (both paths profit from it)

    torch.set_num_threads(args.threads)
    p = AnalysisParams(maxk=args.maxk)
    X, Y, labels = synthetic_layer(args.n, args.d, args.subjects, args.seed)
    devices = {} if args.no_project_cpu else {"b_project_cpu": "cpu"}
    if not args.no_gpu and (args.gpu_device != "cuda" or torch.cuda.is_available()):
        devices["c_project_gpu"] = args.gpu_device
    runs, gram, knn_seconds = {}, {}, {}
    with threadpool_limits(limits=args.threads):
        y_neighbors = layer_neighbors(Y, p.kept_neighbors)  # what Y's own analysis keeps (outside the timing)
        paths = {"a_dadapy_reference": lambda: reference_path(X, Y, labels, p)}
        for name, device in devices.items():
            if name == "c_project_gpu":  # warm-up: kernels, cuBLAS handles
                warm = min(2000, args.n)
                project_path(X[:warm], labels[:warm], layer_neighbors(Y[:warm], p.kept_neighbors), p, device)
            paths[name] = lambda device=device: project_path(X, labels, y_neighbors, p, device)
        # Interleaved repeats, fastest kept: other jobs on a shared machine only ever add time.
        for _ in range(args.repeats):
            for name, path in paths.items():
                if name in devices:
                    libraries = ("numpy", "torch") if name == "b_project_cpu" else ("torch",)
                    gram[name] = {library: min(gram.get(name, {}).get(library, np.inf),
                                               gram_seconds(X, Y, library, devices[name])) for library in libraries}
                result = path()
                knn_seconds[name] = min(knn_seconds.get(name, np.inf), result[1]["knn"])
                if name not in runs or sum(result[1].values()) < sum(runs[name][1].values()):
                    runs[name] = result
        small = small_layer(args.small_n, args.small_d, max(5, 5 * args.repeats), args.seed) if args.small_n else None

    ref, ref_t = runs["a_dadapy_reference"]
    report = {"n": args.n, "d": args.d, "maxk": args.maxk, "threads": args.threads, "subjects": args.subjects,
              "repeats": args.repeats, "commit": short_commit(), "command": shlex.join(["benchmarks/analysis_speed.py",
                                                                                         *sys.argv[1:]]),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "gpu": torch.cuda.get_device_name() if devices.get("c_project_gpu") == "cuda" else None,
                          "gpu_device": devices.get("c_project_gpu")},
              "reference_results": {k: np.asarray(v).tolist() for k, v in ref.items()}, "runs": {},
              "small_layer": small}
    a_shared = sum(ref_t.values())
    print(f"N={args.n} D={args.d} maxk={args.maxk} threads={args.threads} (fastest of {args.repeats})")
    stages = list(dict.fromkeys([*ref_t, *(stage for _, t in runs.values() for stage in t)]))
    print(f"{'stage':<15}" + "".join(f"{name:>22}" for name in runs))
    for stage in stages:
        print(f"{stage:<15}" + "".join(f"{runs[name][1].get(stage, float('nan')):>21.2f}s" for name in runs))
    gram_flop = 2.0 * args.n * args.n * args.d
    for name, (results, t) in runs.items():
        shared = sum(t.get(s, 0.0) for s in SHARED_STAGES)
        total = sum(t.values())
        mismatches = [] if name.startswith("a_") else differences(ref, results)
        entry = {"stages_s": t, "same_metrics_as_reference_s": shared, "all_metrics_s": total,
                 "speedup_same_metrics": a_shared / shared, "speedup_all_metrics": a_shared / total,
                 "identical_to_reference": not mismatches, "mismatches": mismatches}
        print(f"{name}: reference's metric set {shared:.2f} s ({a_shared / shared:.2f}x of (a)), "
              f"all metrics {total:.2f} s ({a_shared / total:.2f}x), "
              f"{'identical to (a)' if not mismatches else 'DIFFERS: ' + '; '.join(mismatches)}")
        # Both the Gram matrix and the kNN as the fastest of the repeats.
        knn = knn_seconds[name]
        for library, seconds in gram.get(name, {}).items():
            rate = gram_flop / seconds / 1e9
            entry[f"float32_gram_{library}"] = {"s": seconds, "gflops": rate, "knn_s": knn, "knn_over_gram": knn / seconds}
            whose = " (the kNN's BLAS on the CPU)" if library == "numpy" else ""
            print(f"  {library}{whose} float32 matmul: a Gram matrix's work (2 N^2 D = {gram_flop:.2g} FLOP) in "
                  f"{seconds:.2f} s = {rate:.0f} GFLOP/s; the kNN (fastest {knn:.2f} s) takes {knn / seconds:.2f} "
                  f"of them ({100 * seconds / knn:.0f}% of that rate)")
        report["runs"][name] = entry
    if small:
        print(f"small layer N={small['n']} D={small['d']} ({small['params']} parameters): {small['layer_s']:.3f} s per "
              "layer, all metrics (" + ", ".join(f"{k} {v:.3f}" for k, v in small["stages_s"].items())
              + f"); process start-up {small['process_start_s']:.2f} s, once per job")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
