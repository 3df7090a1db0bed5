"""Sizing analysis jobs: the memory the workflow asks for covers a real layer's analysis."""
import pytest


@pytest.mark.slow
def test_layer_memory_bounds_a_real_analysis():
    """The job size the workflow asks for covers the peak memory of analysing one layer, in a process set up as the
    analysis entry point sets it (freed memory kept) and analysing layers one after another, as a job does."""
    import os
    import subprocess
    import sys

    from repgeom.analysis.params import layer_memory_mb

    n, d, params = 3000, 512, {"maxk": 200, "range_max": 64, "local_id_neighbors": 64, "probe_pca_dim": 32}
    script = f"""
import numpy as np, pandas as pd
from repgeom.analysis.layer import layer_metric_rows
from repgeom.analysis.memory import keep_freed_memory
keep_freed_memory()
rng = np.random.default_rng(0)
X = rng.normal(size=({n}, {d})).astype(np.float32)
labels = pd.DataFrame({{"subject": rng.integers(0, 6, {n}).astype(str), "gold": rng.integers(0, 4, {n}).astype(str)}})
for _ in range(3):
    layer_metric_rows(X, labels, {params!r})
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) // 1024)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            env={"OMP_NUM_THREADS": "1", "PATH": "", "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert result.returncode == 0, result.stderr[-3000:]
    # VmHWM, not ru_maxrss: the child's ru_maxrss starts at the peak of the pytest process that forked it.
    peak_mb = int(result.stdout.split()[-1])
    estimate = layer_memory_mb(n, d, params)
    assert peak_mb <= estimate, (peak_mb, estimate)
    assert layer_memory_mb(2 * n, d, params) > estimate
