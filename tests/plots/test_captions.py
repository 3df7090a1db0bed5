"""The report's captions render, as `snakemake --report` renders them (Jinja, then docutils), without a docutils
warning, for the shipped configs and for a run without fine-tuning or prompt controls; they state the settings, and
take what is derived from the config from the rule's params (`repgeom.workflow.captions`), not from formulas of
their own."""
import copy
import types
from pathlib import Path

import pytest
import yaml
from docutils.core import publish_parts
from jinja2 import Environment

from repgeom.plots import FIGURE_NAMES
from repgeom.workflow.captions import LAYER_BY_HOOK, caption_values

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "workflow" / "report"
CONFIGS = ["config.yaml", "tiny.yaml", "paper_llama3_8b.yaml", "paper_llama3_70b.yaml"]


def render(name: str, config: dict, params: dict | None = None, **wildcards) -> str:
    """Snakemake's own steps (snakemake/report/__init__.py): Jinja with these options, then rst -> HTML; the params
    are the figure rules' (`caption`, as workflow/rules/report.smk gives it) and `params`."""
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    params = {"caption": caption_values(config), **(params or {})}
    snakemake = types.SimpleNamespace(config=config, wildcards=types.SimpleNamespace(**wildcards),
                                      params=types.SimpleNamespace(**params))
    text = env.from_string((REPORT / f"{name}.rst").read_text()).render(snakemake=snakemake, categories={},
                                                                         files={})
    # halt_level 2: a docutils warning (bad indentation, a broken inline markup) raises
    return publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 2})["body"]


def load(name: str) -> dict:
    """A shipped config as the rules see it: validated, so the schema's defaults are filled in."""
    from snakemake.utils import validate
    config = yaml.safe_load((ROOT / "config" / name).read_text())
    validate(config, str(ROOT / "config" / "schema.yaml"))
    return config


def without_finetuning(config: dict) -> dict:
    config = copy.deepcopy(config)
    config.pop("finetune", None)
    config["variants"] = {}
    del config["extraction"]["token_sample"]
    return config


def test_every_figure_has_a_caption():
    assert {p.stem for p in REPORT.glob("*.rst")} == {*FIGURE_NAMES, "variants", "workflow", "model_comparison"}


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("variant", ["as shipped", "no fine-tuning, no controls"])
def test_captions_render_without_warnings(config_name, variant):
    config = load(config_name)
    if variant != "as shipped":
        config = without_finetuning(config)
    model = next(iter(config["models"]))
    for name in FIGURE_NAMES:
        html = render(name, config, model=model)
        assert model in html and "{{" not in html and "{%" not in html, name
    assert "shot" in render("variants", config, model=model, shots="5")
    assert "repgeom" in render("workflow", config)
    comparison = render("model_comparison", config, {"models": [model, "other"], "conditions": ["0shot", "5shot"]})
    assert f"{model}, other" in comparison and "0shot, 5shot" in comparison
    assert f"({config['extraction']['hook']} hook)" in comparison


def test_captions_state_the_settings():
    config = load("tiny.yaml")
    config["analysis"]["params"].update(maxk=77, id_scale_index=3, Z=2.5, density_k=11, class_fraction=0.2,
                                        overlap_k=21, local_id_neighbors=33, probe_pca_dim=17)
    html = {name: render(name, config, model="tiny-llama") for name in FIGURE_NAMES}
    assert "(n1, n2) = (8, 16)" in html["id_gride"] and "maxk = 77" in html["id_gride"]
    assert "Z=2.5" in html["n_clusters"] and "k = 11" in html["n_clusters"] and "n2 = 16" in html["ari"]
    assert "floor(0.2" in html["label_overlap"]
    assert "k = 21" in html["data_overlap"] and "last checkpoint" in html["data_overlap"]
    assert "L = 33" in html["local_id_steps"] and "layers 2, 4" in html["local_id_steps"]
    assert "first 17 principal components" in " ".join(html["probe"].split())
    for name in ("id_gride", "ari", "probe"):
        assert "0, 1, 2, 5-shot" in html[name] and "epoch-end checkpoints" in html[name] and "(lora)" in html[name]
    bare = render("ari", without_finetuning(config), model="tiny-llama")
    assert "this run fine-tunes nothing" in " ".join(bare.split())
    assert "none in this run" in bare


def test_front_page_describes_the_run():
    html = render("workflow", load("tiny.yaml"))
    assert "tiny-llama" in html and "synthetic-mmlu" in html and "shuffled (5 shots)" in html
    assert "Z = 1.6" in html and "n2 = 32" in html and "lora" in html


@pytest.mark.parametrize("hook", list(LAYER_BY_HOOK))
def test_captions_say_what_a_layer_is_under_each_hook(hook):
    config = load("tiny.yaml")
    config["extraction"]["hook"] = hook
    words = " ".join(LAYER_BY_HOOK[hook].replace("*", "").split())
    for name in ("id_gride", "ari", "data_overlap", "model_comparison"):
        html = render(name, config, {"models": ["a", "b"], "conditions": ["0shot"]}, model="tiny-llama")
        assert words in " ".join(html.replace("<em>", "").replace("</em>", "").split()), (name, hook)


def test_captions_hold_no_formula_or_repeated_paragraph():
    """The Gride scale, what a layer is and the conditions paragraph come from `params.caption`; only the front page,
    which Snakemake renders with the config alone, computes n2 itself."""
    for path in REPORT.glob("*.rst"):
        text = path.read_text()
        if path.stem != "workflow":
            assert "id_scale_index\"] + 1" not in text and "**Conditions shown**" not in text, path.name
            assert '"block_input_norm": "' not in text, path.name
    assert "**Conditions shown**" in caption_values(load("tiny.yaml"))["conditions_shown"]
