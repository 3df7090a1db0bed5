"""A saved adapter is the same bytes in every process: peft keeps LoRA's target_modules as a set and writes it in the
process's hash order (PYTHONHASHSEED), so `save_adapter` rewrites adapter_config.json canonically."""
import json
import os
import subprocess
import sys

SAVE = """
import sys, torch
from repgeom.finetune.methods import save_adapter, trainable_model
from repgeom.finetune.params import parse_params
from repgeom.models.loading import load_model

model_dir, out = sys.argv[1:3]
params = parse_params({"method": "lora", "lora_r": 2, "target_modules": ["q", "k", "v", "o", "gate", "up", "down"]})
torch.manual_seed(0)
model = trainable_model(load_model(model_dir), params)
save_adapter(model, __import__("pathlib").Path(out), is_main=True)
"""


def save_in_process(model_dir, out, seed):
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", SAVE, str(model_dir), str(out)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def test_adapter_config_is_the_same_under_any_hash_seed(tiny_llama_dir, tmp_path):
    first, second = (save_in_process(tiny_llama_dir, tmp_path / f"seed{seed}", seed) for seed in (1, 2))
    assert (first / "adapter_model.safetensors").read_bytes() == (second / "adapter_model.safetensors").read_bytes()
    assert (first / "adapter_config.json").read_bytes() == (second / "adapter_config.json").read_bytes()
    config = json.loads((first / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"])
    assert oct((first / "adapter_config.json").stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
