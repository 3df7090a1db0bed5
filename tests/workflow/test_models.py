"""Where each model comes from, and its depth and width read from the model (repgeom.workflow.models)."""
import json

import pytest

from repgeom.errors import InputError
from repgeom.workflow.models import ModelConfigError, folder_shape, made_by_workflow, model_source


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
