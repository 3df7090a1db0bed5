"""What every job's provenance record says about the job itself (the wrapper's --meta)."""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from repgeom.provenance.records import config_subset


def as_json(value) -> str:
    """Rule parameters as Snakemake compares them: by value, whatever the key order the config was written in."""
    return json.dumps(value, sort_keys=True)


def job_meta(config: Mapping, rule: str, wildcards: Mapping[str, str], config_keys=(), seed_keys=(),
             params: dict | None = None, model: dict | None = None, dataset: dict | None = None) -> str:
    """The rule, its wildcards and resolved parameters, the config keys it depends on and its seeds (dotted keys,
    `{model}` and other wildcards filled in), and the model and dataset it reads."""
    return as_json({
        "rule": rule,
        "wildcards": dict(wildcards),
        "params": params or {},
        "config_subset": config_subset(config, [key.format(**wildcards) for key in config_keys]),
        "seeds": config_subset(config, [key.format(**wildcards) for key in seed_keys]),
        "model": model,
        "dataset": dataset,
    })


def provenance_meta(config: Mapping, rule: str, config_keys=(), seed_keys=(), params=None, *,
                    model_spec: Callable[[str], str], dataset: dict) -> Callable:
    """A rule's `params.provenance`: a function of the wildcards giving `job_meta` (`params(wildcards)`: the resolved
    parameters where the config leaves defaults; `model_spec(model)`: what the job loads for the `{model}` wildcard;
    `dataset`: the dataset the run reads)."""

    def meta(wildcards) -> str:
        model = wildcards.get("model")
        return job_meta(
            config, rule, dict(wildcards.items()), config_keys, seed_keys,
            params=params(wildcards) if params else None,
            model={"name": model, "spec": model_spec(model), "revision": config["models"][model].get("revision")}
            if model else None,
            dataset=dataset,
        )

    return meta
