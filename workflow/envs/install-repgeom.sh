#!/usr/bin/env bash
# repgeom itself, without its dependencies (each environment file lists what its rules import), into the active
# environment: every <env>.post-deploy.sh runs it once Snakemake has created that environment
# (--software-deployment-method conda). Snakemake runs those files where they lie in the checkout, so the checkout
# is two folders up, whatever --conda-prefix or --directory say.
set -euo pipefail
pip install --quiet --no-deps --editable "$(dirname "$0")/../.."
