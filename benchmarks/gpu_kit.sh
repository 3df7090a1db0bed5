#!/usr/bin/env bash
# `make gpu-kit`: the Python packages the lent GPU machine lacks (it has PyTorch, transformers, peft, accelerate, but no
# deepspeed, zarr, dadapy; /work/.library/device/KINDS.md), gathered into KIT (default .gpu-kit, git-ignored) for
# Python 3.12 on manylinux x86-64, at the versions this project's environment (PY's) was tested with:
#
#   * wheels from PyPI: the compiled ones for cp312 (pydantic-core, numcodecs, google-crc32c), the pure-Python ones
#     (zarr and its donfig, pydantic and its small helpers, hjson; transformers and peft at the project's pins, since
#     the device's are older);
#   * deepspeed built here as a pure-Python wheel without ops (DS_BUILD_OPS=0: the stage uses torch's AdamW and no
#     fused kernel; DeepSpeed would compile any op it needed at run time);
#   * dadapy as its source archive: PyPI has no manylinux wheel of 0.3.4, and its C files (Cython 3.2 output) compile
#     against the device's numpy 2 with the device's gcc and Python headers (benchmarks/gpu_kit_install.sh).
#
# Snakemake and gguf stay behind: the check runs no workflow and imports no GGUF file. Prints the kit's size, which
# must stay under the device call's 64 MiB with the working tree (docs/gpu.md).
set -euo pipefail
PY=${PY:-.venv/bin/python}
KIT=${KIT:-.gpu-kit}
rm -rf "$KIT"
mkdir -p "$KIT"

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
pin() { for name in "$@"; do echo "$name==$(version "$name")"; done; }

CP312=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$KIT")
"$PY" -m pip download -q "${CP312[@]}" $(pin pydantic-core numcodecs google-crc32c)
"$PY" -m pip download -q "${CP312[@]}" $(pin zarr donfig pydantic annotated-types typing-inspection typing-extensions \
                                                hjson transformers peft)
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$KIT" "$(pin deepspeed)"
"$PY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$KIT" "$(pin dadapy)"

ls -l "$KIT"
du -sh "$KIT"
size=$(du -sb "$KIT" | cut -f1)
if (( size > 48 * 1024 * 1024 )); then
  echo "gpu-kit: $KIT is $((size / 1048576)) MiB, over the 48 MiB that leaves room for the working tree in 64 MiB" >&2
  exit 1
fi
