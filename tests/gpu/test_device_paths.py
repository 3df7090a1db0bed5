"""The GPU paths' decisions, checked on the CPU with faked device counts and stand-ins (issue 28's findings 1-7):
one rank -> GPU mapping for the project, a job given GPUs that torch cannot use stops, an analysis job uses the
devices it was given, the prefix subspace's indices follow its table, the letter loss makes no host sync, the shipped
DeepSpeed configs keep the throughput timer off, and the loader places weights on the GPU directly and leaves room
for activations under a device map."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from gpu_tier import finetune_frame
from helpers import ROOT, run_snakemake

from repgeom import distributed
from repgeom.distributed import FAKE_GPUS_ENV, GPUS_ENV, NoCudaError, RankInfo, gpus_given, rank_device

SRC = ROOT / "src" / "repgeom"


@pytest.fixture
def no_gpu_env(monkeypatch):
    for name in (GPUS_ENV, "SLURM_GPUS_ON_NODE", FAKE_GPUS_ENV):
        monkeypatch.delenv(name, raising=False)


# --- 1. rank -> GPU -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("local_rank, visible, expected", [
    (0, 1, 0), (1, 1, 0), (7, 1, 0),   # srun --ntasks N --gpus-per-task 1: every rank sees one GPU, its device 0
    (3, 8, 3), (1, 2, 1),              # torchrun on a node of N GPUs: one each
    (3, 2, 1),                         # more ranks than GPUs: shared round-robin
])
def test_rank_device_is_local_rank_modulo_visible_devices(local_rank, visible, expected, no_gpu_env):
    device = rank_device(RankInfo(local_rank, 8, local_rank), cuda_available=True, device_count=visible)
    assert device == torch.device("cuda", expected)


def test_fake_gpus_run_on_the_cpu(monkeypatch, no_gpu_env):
    """A test cluster's GRES devices are files: its jobs say so (REPGEOM_FAKE_GPUS=1) and run on the CPU."""
    with pytest.raises(NoCudaError):
        rank_device(RankInfo(0, 1, 0), 2, "SLURM_GPUS_ON_NODE", cuda_available=False)
    monkeypatch.setenv(FAKE_GPUS_ENV, "1")
    assert rank_device(RankInfo(0, 1, 0), 2, "SLURM_GPUS_ON_NODE", cuda_available=False) == torch.device("cpu")


def test_rank_device_on_the_cpu(no_gpu_env):
    assert rank_device(RankInfo(1, 2, 1), cuda_available=False) == torch.device("cpu")
    # A job given no GPU stays off them, even where CUDA is present.
    assert rank_device(RankInfo(0, 1, 0), gpus=0, cuda_available=True, device_count=4) == torch.device("cpu")


def test_extraction_sets_the_mapped_device(monkeypatch, no_gpu_env):
    """The extraction's compute_device used torch.cuda.set_device(local_rank): rank 1 that sees one GPU asked for
    device 1."""
    from repgeom.extract import model_setup

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert model_setup.compute_device(RankInfo(1, 2, 1), None) == torch.device("cuda", 0)
    assert [torch.device(d) for d in chosen] == [torch.device("cuda", 0)]
    assert model_setup.compute_device(RankInfo(0, 1, 0), "auto") == torch.device("cuda", 0)


def test_deepspeed_reads_the_mapped_device_as_local_rank(monkeypatch, no_gpu_env):
    """DeepSpeed's engine and zero.Init take LOCAL_RANK as the GPU index: under one GPU per task, rank 1's
    LOCAL_RANK=1 named a device it cannot see."""
    import deepspeed

    seen = {}
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: seen.setdefault("set_device", device))
    monkeypatch.setattr(deepspeed, "init_distributed",
                        lambda **kwargs: seen.update(local_rank=distributed.os.environ["LOCAL_RANK"], **kwargs))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    device = rank_device(RankInfo(1, 2, 1), cuda_available=True, device_count=1)
    distributed.init_process_group(RankInfo(1, 2, 1), zero3=True, device=device)
    assert seen["local_rank"] == "0" and seen["dist_backend"] == "nccl"
    assert torch.device(seen["set_device"]) == torch.device("cuda", 0)


def test_one_rank_to_device_mapping_in_the_project():
    """No module but repgeom.distributed turns a local rank into a device."""
    pattern = re.compile(r"(set_device|device)\(\s*(\"cuda\",\s*)?[\w.]*local_rank")
    offenders = [str(path.relative_to(ROOT)) for path in SRC.rglob("*.py")
                 if path.name != "distributed.py" and pattern.search(path.read_text())]
    assert offenders == []


# --- 3. GPUs given, CUDA unusable -----------------------------------------------------------------------------------

def test_gpus_given_from_the_launcher_or_slurm(no_gpu_env):
    assert gpus_given({}) == (None, "")
    assert gpus_given({"SLURM_GPUS_ON_NODE": "4"}) == (4, "SLURM_GPUS_ON_NODE")
    assert gpus_given({GPUS_ENV: "0", "SLURM_GPUS_ON_NODE": "4"}) == (0, GPUS_ENV)
    assert gpus_given({"CUDA_VISIBLE_DEVICES": "0,1"}) == (None, "")  # a shell may export it on any machine
    with pytest.raises(distributed.LaunchError, match="REPGEOM_JOB_GPUS is not a number: 'two'"):
        gpus_given({GPUS_ENV: "two"})


def test_gpus_given_without_cuda_stop(no_gpu_env):
    with pytest.raises(NoCudaError, match=r"given 2 GPU\(s\) \(SLURM_GPUS_ON_NODE\) but torch sees no usable CUDA"):
        rank_device(RankInfo(0, 1, 0), gpus=2, source="SLURM_GPUS_ON_NODE", cuda_available=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA does")
@pytest.mark.parametrize("variable", [GPUS_ENV, "SLURM_GPUS_ON_NODE"])
def test_stages_given_gpus_without_cuda_stop_with_a_message(variable, monkeypatch, tmp_path, tiny_llama_dir,
                                                             prompts_file, capsys):
    """Extraction, fine-tuning and analysis each stop (exit 1, one line) instead of running on the CPU."""
    from repgeom.analysis.__main__ import main as analysis_main
    from repgeom.extract.__main__ import main as extract_main
    from repgeom.finetune.__main__ import main as finetune_main

    monkeypatch.setenv(variable, "1")
    expected = f"given 1 GPU(s) ({variable}) but torch sees no usable CUDA device"
    status = extract_main(["--model", str(tiny_llama_dir), "--prompts", str(prompts_file), "--store",
                           str(tmp_path / "s.zarr"), "--group", "m/c", "--accuracy-out", str(tmp_path / "a.parquet")])
    assert status == 1 and expected in capsys.readouterr().err
    train = tmp_path / "train.parquet"
    finetune_frame(8).to_parquet(train)
    status = finetune_main(["--model", str(tiny_llama_dir), "--train", str(train), "--out", str(tmp_path / "ft"),
                            "--params-json", "{}", "--deepspeed", "zero2"])
    assert status == 1 and expected in capsys.readouterr().err
    status = analysis_main(["layers", "--store", str(tmp_path / "s.zarr"), "--group", "m/c",
                            "--out", str(tmp_path / "o.parquet")])
    assert status == 1 and expected in capsys.readouterr().err
    status = analysis_main(["layers", "--store", str(tmp_path / "s.zarr"), "--group", "m/c", "--device", "cuda",
                            "--out", str(tmp_path / "o.parquet")])
    assert status == 1 and "torch sees no usable CUDA device" in capsys.readouterr().err


# --- 4. an analysis job uses the devices it was given ---------------------------------------------------------------

def test_analysis_default_device_follows_the_job(monkeypatch, no_gpu_env):
    from repgeom.analysis.neighbors import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv(GPUS_ENV, "0")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setenv(GPUS_ENV, "1")
    assert resolve_device(None) == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.slow
@pytest.mark.parametrize("gpus, device", [(0, "cpu"), (1, "cuda")])
def test_analysis_rules_pass_the_jobs_device(gpus, device, tmp_path):
    """The workflow's analysis jobs name their device from their own GPU count: a `gpus: 0` job (every shipped
    config's) runs on the CPU even where a GPU is present, and leaves the GPUs to the jobs that hold them."""
    config = tmp_path / "config.yaml"
    import yaml

    loaded = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    loaded["hardware"]["jobs"]["analyze"] = {"gpus": gpus, "cpus": 1, "mem_mb": 1000, "runtime": 10}
    config.write_text(yaml.safe_dump(loaded))
    result = run_snakemake("-n", "-p", "--cores", "1", "--configfile", str(config), workdir=tmp_path)
    out = result.stdout + result.stderr
    commands = [line for line in out.splitlines() if "repgeom.analysis layers" in line]
    assert commands, out[-3000:]
    assert all(f"--device {device}" in line for line in commands), commands[:2]


# --- 2. the prefix subspace under ZeRO-3 ----------------------------------------------------------------------------

def test_prefix_subspace_indices_follow_the_table():
    """ZeRO-3 moves parameters, not buffers: the vertices' row indices must be made on the table's device (an index
    on the CPU against a table on the GPU fails). Here the table's parameter alone goes to the meta device, as ZeRO-3
    moves it to the GPU, and the indices the table is called with must follow it."""
    from repgeom.finetune.methods import PrefixSubspace

    subspace = PrefixSubspace(3, 4, 8)
    expected_shape = subspace.vertices().shape
    subspace.embedding.to("meta")  # the table's parameter only, not the subspace's own buffers
    called_with = []
    subspace.embedding.register_forward_pre_hook(lambda module, args: called_with.append(args[0].device))
    vertices = subspace.vertices()
    assert called_with == [torch.device("meta")]
    assert vertices.device.type == "meta" and vertices.shape == expected_shape


# --- 7. host syncs and DeepSpeed's timer ----------------------------------------------------------------------------

def test_letter_loss_of_a_collated_batch_makes_no_host_sync(monkeypatch, tiny_llama_dir, tmp_path):
    """nonzero, equal and unique wait for the GPU; a collated batch carries its label positions, computed on the host.
    Same losses as from the labels alone."""
    from transformers import AutoModelForCausalLM

    from repgeom.finetune.data import collate, encode_finetune_set, letter_losses
    from repgeom.models.loading import load_tokenizer

    path = tmp_path / "set.parquet"
    finetune_frame(8).to_parquet(path)
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    batch = collate(encode_finetune_set(path, tokenizer, None), np.array([0, 3, 5, 1]), tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with torch.no_grad():
        from_labels = letter_losses(model, {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}, 0)

        def syncing(*args, **kwargs):
            raise AssertionError("a host sync in letter_losses")

        for name in ("nonzero", "equal", "unique"):
            monkeypatch.setattr(torch, name, syncing)
        collated = letter_losses(model, batch, 0)
    torch.testing.assert_close(collated, from_labels, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_shipped_deepspeed_configs_turn_the_throughput_timer_off(name):
    """DeepSpeed's throughput timer is on by default and synchronises the GPU at every forward and step."""
    from deepspeed.utils.config import get_timers_config

    from repgeom.shipped import deepspeed_config_path

    config = json.loads(deepspeed_config_path(name).read_text())
    assert get_timers_config(config).enabled is False
    assert config["wall_clock_breakdown"] is False


# --- 5, 6. weights to the GPU directly, room for activations under a device map -------------------------------------

class FakeModel:
    def __init__(self):
        self.moved = []

    def to(self, device):
        self.moved.append(device)
        return self

    def eval(self):
        return self


@pytest.fixture
def fake_from_pretrained(monkeypatch):
    import transformers

    calls = []

    def from_pretrained(spec, **kwargs):
        calls.append(kwargs)
        return FakeModel()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    return calls


def test_weights_load_to_the_gpu_directly(fake_from_pretrained, tiny_llama_dir):
    """Loaded on the host, then moved, 8 data-parallel ranks held 8 host copies."""
    from repgeom.models.loading import load_model

    model = load_model(str(tiny_llama_dir), device=torch.device("cuda", 3), dtype="bfloat16")
    assert fake_from_pretrained[-1]["device_map"] == {"": torch.device("cuda", 3)} and model.moved == []
    model = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    assert fake_from_pretrained[-1]["device_map"] is None and model.moved == ["cpu"]


def test_weights_under_zero3_are_not_placed(fake_from_pretrained, tiny_llama_dir):
    from transformers.integrations import HfDeepSpeedConfig

    from repgeom.models.loading import load_model

    keep = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})  # noqa: F841
    load_model(str(tiny_llama_dir), device=torch.device("cuda", 0), dtype="bfloat16")
    assert fake_from_pretrained[-1]["device_map"] is None


def test_device_map_leaves_room_for_the_forward_pass(fake_from_pretrained, monkeypatch, tiny_llama_dir):
    from repgeom.models import loading

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (20 << 30, 40 << 30))
    loading.load_model(str(tiny_llama_dir), device=torch.device("cuda", 0), dtype="bfloat16", device_map="auto",
                       reserved_batch_tokens=4096)
    call = fake_from_pretrained[-1]
    assert call["device_map"] == "auto" and set(call["max_memory"]) == {0, 1}
    assert all(budget < 20 << 30 for budget in call["max_memory"].values())


LLAMA3_70B = dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                  num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=8192,
                  tie_word_embeddings=False)


def seventy_b_layout(batch_tokens: int, free: dict[int, int]):
    """transformers' balanced device map of the 70B under `device_map_max_memory`'s budgets: (layout, bytes of
    weights and blocks per GPU)."""
    from accelerate import init_empty_weights
    from accelerate.utils import compute_module_sizes, get_balanced_memory, infer_auto_device_map
    from transformers import LlamaConfig, LlamaForCausalLM

    from repgeom.models.loading import device_map_max_memory

    config = LlamaConfig(**LLAMA3_70B)
    with init_empty_weights():
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    budget = device_map_max_memory(config, batch_tokens, free)
    no_split = ["LlamaDecoderLayer"]
    balanced = get_balanced_memory(model, max_memory=budget, no_split_module_classes=no_split)
    layout = infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split)
    sizes = compute_module_sizes(model)
    weights = {gpu: sum(sizes[name] for name, where in layout.items() if where == gpu) for gpu in free}
    blocks = {gpu: sum(1 for name, where in layout.items() if where == gpu and ".layers." in name) for gpu in free}
    return config, layout, weights, blocks


def test_the_70b_layout_on_five_40gb_gpus_keeps_each_gpu_under_its_memory(monkeypatch):
    """The reference's 70B placement (5 x 40 GB A100, config/paper_llama3_70b.yaml) as transformers makes it with the
    budgets: every GPU's weights plus the forward pass's reserve (the LM head's GPU with the logit lens) within its
    memory. Without budgets accelerate fills the GPUs with weights up to what is free, and the first batch runs out
    of memory; with them a batch that cannot fit is refused at loading (weights left over for the disk, which
    from_pretrained refuses without an offload folder) instead."""
    from repgeom.models.loading import forward_reserve_bytes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # accelerate places on GPUs it believes are there
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 5)
    free = {gpu: 39 << 30 for gpu in range(5)}  # 40 GB cards less the CUDA context
    config, layout, weights, blocks = seventy_b_layout(12288, free)
    assert set(layout.values()) == set(free)  # all on the GPUs, none offloaded
    head = layout["lm_head"]
    for gpu in free:
        need = weights[gpu] + forward_reserve_bytes(config, 12288, blocks=blocks[gpu], lens=gpu == head)
        assert need <= free[gpu], (gpu, weights[gpu] / 2**30, need / 2**30)
    # 16384 tokens (the extraction's GPU default; the paper config asks 32768) do not fit beside a fifth of the
    # weights with the lens's room: loading stops rather than the first batch.
    _, layout, _, _ = seventy_b_layout(16384, free)
    assert "disk" in layout.values()
