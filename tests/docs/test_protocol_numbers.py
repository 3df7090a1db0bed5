"""Every number docs/protocol.md quotes for a shipped config is that config's value: the table of scaled sizes
(§8), the analysis parameters (§5.10), the size classes' fine-tuning values (§3.1) and the values quoted in the
text. The configs are read as the workflow reads them (validated, the schema's defaults filled in); a fine-tuning
method's values are its size class's, overridden by the method's own keys."""
from __future__ import annotations

import copy
import functools
import math
import re
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from repgeom.finetune.params import method_params

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = (ROOT / "docs/protocol.md").read_text()
PAPER = ("paper_llama3_8b.yaml", "paper_llama3_70b.yaml")
SHIPPED = ("config.yaml", "tiny.yaml", *PAPER)


@functools.cache
def _resolved(name: str) -> dict:
    config = yaml.safe_load((ROOT / "config" / name).read_text())
    validate(config, str(ROOT / "config/schema.yaml"))
    return config


def resolved(name: str) -> dict:
    return copy.deepcopy(_resolved(name))


def value(config: dict, key: str):
    """A config's value at a dotted key; `finetune.methods.<method>.<param>` is the method's merged value."""
    parts = key.split(".")
    if parts[:2] == ["finetune", "methods"]:
        return method_params(config["finetune"], parts[2])[parts[3]]
    for part in parts:
        config = config[part]
    return config


def number(text: str):
    """`60,000` -> 60000, `2e-4` -> 0.0002; anything else stays text."""
    text = text.strip()
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return text


def same(quoted, actual) -> bool:
    if isinstance(quoted, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return math.isclose(quoted, actual, rel_tol=1e-12)
    return quoted == actual


def section(number_: str) -> str:
    """The text of one numbered section (`## 8.` or `### 5.10`), up to the next heading."""
    match = re.search(rf"^#+ {re.escape(number_)} .*?$(.*?)(?=^#)", PROTOCOL + "\n#", re.M | re.S)
    assert match, f"docs/protocol.md has no section {number_}"
    return match.group(1)


def tables(text: str):
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") and i and lines[i - 1].startswith("|"):
            header = [c.strip() for c in lines[i - 1].strip().strip("|").split("|")]
            rows = []
            for row in lines[i + 1:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            yield header, rows


def config_tables():
    """(key, config file, quoted cell) of every table whose columns are named by config files."""
    cells = []
    for header, rows in tables(PROTOCOL):
        columns = {i: name.strip("`") for i, name in enumerate(header) if re.fullmatch(r"`[a-z0-9_]+\.yaml`", name)}
        for row in rows if columns else []:
            key = re.fullmatch(r"`([^`]+)`", row[0])
            assert key, f"docs/protocol.md: a config table's row does not start with a `key`: {row}"
            cells += [(key.group(1), columns[i], row[i]) for i in columns]
    return cells


def test_the_scaled_sizes_table_is_found():
    assert {name for _, name, _ in config_tables()} == {"paper_llama3_8b.yaml", "config.yaml", "tiny.yaml"}


@pytest.mark.parametrize("key, name, cell", config_tables(), ids=lambda x: str(x)[:40])
def test_config_table_cells_are_the_configs_values(key, name, cell):
    quoted = number(cell.split(" (")[0])
    actual = value(resolved(name), key)
    assert same(quoted, actual), f"docs/protocol.md quotes {key} = {cell!r} for config/{name}; the config has {actual!r}"


def test_analysis_parameters_are_the_defaults_the_paper_configs_run():
    quoted = dict(re.findall(r"`(\w+)`\s+([0-9.]+)", section("5.10")))
    assert len(quoted) == 12, quoted
    schema = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
    defaults = {k: v["default"] for k, v in
                schema["properties"]["analysis"]["properties"]["params"]["properties"].items()}
    assert {k: float(v) for k, v in quoted.items()} == {k: float(v) for k, v in defaults.items()}
    for name in PAPER:
        params = resolved(name)["analysis"]["params"]
        assert {k: float(v) for k, v in quoted.items()} == {k: float(v) for k, v in params.items()}, name


def test_size_class_table_is_what_the_paper_configs_train_with():
    columns = {"rank": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout", "peak lr": "lr",
               "micro-batch": "micro_batch"}
    header, rows = next((h, r) for h, r in tables(section("3.1")) if "rank" in h)
    by_class = {resolved(name)["finetune"]["size_class"]: resolved(name) for name in PAPER}
    assert {row[0].strip("`") for row in rows} == set(by_class)
    for row in rows:
        config = by_class[row[0].strip("`")]
        for column, cell in zip(header[1:], row[1:]):
            assert same(number(cell), value(config, f"finetune.methods.lora.{columns[column]}")), (row[0], column)


def quoted(pattern: str) -> tuple[str, ...]:
    match = re.search(pattern, PROTOCOL, re.S)
    assert match, f"docs/protocol.md no longer says /{pattern}/: update the sentence's check in this test"
    return match.groups()


def finetune_gpus(config: dict) -> int:
    model = next(iter(config["models"]))
    hardware = config["hardware"]
    return hardware["models"].get(model, {}).get("finetune", hardware["jobs"]["finetune"])["gpus"]


def test_numbers_quoted_in_the_text():
    p8, p70 = resolved(PAPER[0]), resolved(PAPER[1])
    lora8 = method_params(p8["finetune"], "lora")
    (shots,) = quoted(r"every shipped config runs k ∈ \{([0-9, ]+)\}")
    for name in SHIPPED:
        assert [int(k) for k in shots.split(",")] == resolved(name)["shots"], name
    (length,) = quoted(r"`models\.<name>\.max_length`: ([0-9,]+) for Llama-3")
    for config in (p8, p70):
        assert number(length) == next(iter(config["models"].values()))["max_length"]
    for key, pattern in [("sampling.max_per_subject", r"`sampling\.max_per_subject` test questions per subject \(reference: (\d+)\)"),
                         ("sampling.seed", r"\(reference seed: (\d+)\)"),
                         ("sampling.finetune_max_per_subject", r"`sampling\.finetune_max_per_subject` \(reference: (\d+)\)"),
                         ("analysis.params.maxk", r"up to `maxk` \(reference (\d+)\)"),
                         ("analysis.params.range_max", r"`range_max` \(reference (\d+)\)"),
                         ("analysis.params.density_k", r"`density_k` = (\d+)"),
                         ("analysis.params.id_scale_index", r"`id_scale_index` = (\d+)"),
                         ("analysis.params.Z", r"with Z = ([0-9.]+)"),
                         ("analysis.params.class_fraction", r"`class_fraction` = ([0-9.]+)"),
                         ("analysis.params.local_id_neighbors", r"L = `local_id_neighbors`, reference (\d+)"),
                         ("analysis.params.probe_pca_dim", r"the first\s+(\d+) principal components"),
                         ("analysis.params.probe_folds", r"(\d+) seeded\s+stratified folds"),
                         ("extraction.token_sample.size", r"\(([0-9,]+) in the paper configs\)"),
                         ("finetune.methods.lora.n_checkpoints", r"\(`n_checkpoints` = (\d+) in the reference\)")]:
        (text,) = quoted(pattern)
        for config in (p8, p70):
            assert same(number(text), value(config, key)), (key, text)
    (overlap,) = quoted(r"k = `overlap_k` \((\d+)\s+in every shipped config\)")
    for name in SHIPPED:
        assert same(number(overlap), value(resolved(name), "analysis.params.overlap_k")), name
    (discard,) = quoted(r"drop the largest (\d+) % of the μ \(`local_id_discard`\)")
    assert same(number(discard) / 100, value(p8, "analysis.params.local_id_discard"))
    warmup, final = quoted(r"warm-up over round\(([0-9.]+) · T\) steps.*?down to (\d+) % of it")
    assert same(number(warmup), lora8["warmup_fraction"]) and same(number(final) / 100, lora8["final_lr_fraction"])
    (batch,) = quoted(r"Effective batch (\d+) = micro-batch")
    assert all(same(number(batch), method_params(c["finetune"], "lora")["effective_batch"]) for c in (p8, p70))
    # "The 8B config trains on one GPU with 4 × 4 × 1; the 70B config on 8 GPUs with 2 × 1 × 8."
    m8, a8, r8, gpus70, m70, a70, r70 = quoted(r"8B config trains on one\s+GPU with (\d) × (\d) × (\d); the 70B config "
                                               r"on (\d) GPUs with (\d) × (\d) × (\d)")
    for config, micro, accumulation, ranks in ((p8, m8, a8, r8), (p70, m70, a70, r70)):
        params = method_params(config["finetune"], "lora")
        assert int(micro) == params["micro_batch"] and int(ranks) == finetune_gpus(config)
        assert int(micro) * int(accumulation) * int(ranks) == params["effective_batch"]
    assert int(gpus70) == finetune_gpus(p70) and finetune_gpus(p8) == 1
    assert quoted(r"ZeRO-2 in the 8B config, ZeRO-3 over (\d) GPUs in the 70B config")[0] == str(finetune_gpus(p70))
    assert (value(p8, "finetune.deepspeed"), value(p70, "finetune.deepspeed")) == ("zero2", "zero3")
    layers8, layers70 = quoted(r"\((\d+) for Llama-3-8B, (\d+) for Llama-3-70B\)")
    assert (int(layers8), int(layers70)) == (value(p8, "models.llama-3-8b.num_layers") + 1,
                                             value(p70, "models.llama-3-70b.num_layers") + 1)
    (epochs,) = quoted(r"(Four) epochs\.")
    assert {"Four": 4}[epochs] == lora8["epochs"]
    quoted(r"The paper configs store\s+the representations in bf16")
    assert value(p8, "extraction.store_dtype") == value(p70, "extraction.store_dtype") == "bfloat16"
