"""What the report's captions (workflow/report/*.rst) state that is derived from the config: the rules that make the
figures pass it as `params.caption`, so that each value and each repeated paragraph is written once, here."""
from __future__ import annotations

from collections.abc import Mapping

from repgeom.analysis.params import gride_scale

# What layer i of the store is, by extraction hook (the last layer is the final norm).
LAYER_BY_HOOK = {
    "block_input_norm": "output of block *i*'s input norm",
    "post_attention_norm": "output of block *i*'s post-attention norm (the residual stream after attention, normalised)",
    "residual": "residual stream entering block *i*",
}


def conditions_shown(config: Mapping) -> str:
    """The paragraph of the layer-wise figures' captions that says which conditions they draw, in which colours
    (`repgeom.plots.selection`)."""
    methods = list((config.get("finetune") or {}).get("methods", {}))
    text = (f"**Conditions shown** (the legend names them): the base model with {', '.join(map(str, config['shots']))}"
            "-shot prompts\n(blue, solid, darker with more shots)")
    if methods:
        text += (f", and for each fine-tuning method ({', '.join(methods)}) its\n"
                 "epoch-end checkpoints ``ft-{method}-epoch{E}``, which read the 0-shot prompts (dashed; orange for the "
                 "first method, then\ngreen, purple; darker is later; at most 4 per method, evenly spaced, the last "
                 "always shown; the legend gives each\none's optimizer step; a method with no epoch checkpoint shows as "
                 "many of its step checkpoints)")
    else:
        text += "; this run\nfine-tunes nothing"
    controls = ", ".join(config.get("variants") or {}) or "none in this run"
    return (text + f". Prompt controls ({controls})\n"
            "are left out here: the *variants* figures compare each plain k-shot prompt with its controls.")


def caption_values(config: Mapping) -> dict:
    """`params.caption` of the figure rules: n2 of the Gride scale the figures show, what layer i is under the
    extraction hook, and the conditions paragraph."""
    return {
        "n2": gride_scale(config["analysis"]["params"]["id_scale_index"]),
        "layer": LAYER_BY_HOOK[config["extraction"]["hook"]],
        "conditions_shown": conditions_shown(config),
    }
