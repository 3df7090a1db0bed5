#!/usr/bin/env bash
# On the lent GPU machine: install the kit that `make gpu-kit` gathered (KIT, default .gpu-kit) into SITE (default
# /tmp/site), for `export PYTHONPATH=SITE:src`. benchmarks/gpu_check.sh --kit runs it first.
#
#   * the wheels: pip, offline, no dependency resolution (the kit holds exactly what the machine lacks);
#   * dadapy 0.3.4 from its source archive, compiled here with the machine's gcc, Python headers and numpy. Its C files
#     (Cython output) read a dtype's subarray as a struct field, which numpy 2's headers no longer expose, and its
#     modules read np.float_, which numpy 2 removed: under numpy >= 2 both are patched (PyDataType_SUBARRAY; an alias
#     np.float_ = np.float64 set before dadapy's modules load). Checked on the CPU: the project's layer analysis
#     gives the same metrics under numpy 2.3 as under the pinned 1.26 (IDs to 1e-9 relative).
set -euo pipefail
KIT=${1:-.gpu-kit}
SITE=${2:-/tmp/site}
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$KIT"/*.whl

build=$(mktemp -d)
tar xzf "$KIT"/dadapy-*.tar.gz -C "$build"
cd "$build"/dadapy-*
if "$PYTHON" -c "import numpy, sys; sys.exit(int(numpy.__version__.split('.')[0]) < 2)"; then
  sed -i 's/__pyx_v_d->subarray->shape/PyDataType_SUBARRAY(__pyx_v_d)->shape/g' dadapy/_cython/*.c
  sed -i '1i import numpy as _np  # numpy 2 removed np.float_, which dadapy 0.3.4 (and its compiled modules) still read\nif not hasattr(_np, "float_"):\n    _np.float_ = _np.float64\n' dadapy/__init__.py
fi
# Its package imports DiffImbalance and CausalGraph (jax, optax, flax: the machine's versions, newer than dadapy's pins)
# at import; the analysis uses neither, so a failure there must not stop `import dadapy`.
"$PYTHON" - <<'PATCH'
from pathlib import Path
init = Path("dadapy/__init__.py")
text = init.read_text()
for name in ("diff_imbalance import DiffImbalance", "causal_graph import CausalGraph"):
    text = text.replace(f"    from .{name}\n", f"    try:\n        from .{name}\n    except ImportError:  # jax/optax/flax API\n        pass\n")
init.write_text(text)
PATCH
"$PYTHON" setup.py -q build_ext --inplace -j "$(nproc)" >build.log 2>&1 || { tail -30 build.log; exit 1; }
rm -rf "$SITE"/dadapy
cp -r dadapy "$SITE"/dadapy
echo "gpu kit: $(ls "$KIT" | wc -l) packages installed into $SITE (dadapy built with numpy $("$PYTHON" -c 'import numpy; print(numpy.__version__)'))"
