"""Fine-tuned conditions: a LoRA adapter (merged for speed) and a prompt-tuning adapter, whose virtual tokens must
never be taken for the prompt's own tokens (nor for the logit lens's rows, which follow the sequence)."""
import numpy as np
import pandas as pd
from peft import PeftModel
from transformers import AutoModelForCausalLM

from repgeom.models.loading import load_tokenizer
from repgeom.store import group_attrs, read_letter_lens, read_token_sample


def peft_model(base_dir, adapter_dir):
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()


def peft_reference(reference, base_dir, adapter_dir, prompts, hook="block_input_norm"):
    """Full-sequence representations of the unmerged peft model, one prompt at a time."""
    return reference(peft_model(base_dir, adapter_dir), load_tokenizer(str(base_dir)), prompts, hook)


def test_lora_adapter(tiny_llama_dir, lora_dir, prompts_file, tmp_path, reference, extract):
    store, stored, accuracy = extract(tiny_llama_dir, prompts_file, tmp_path, adapter=lora_dir)
    results = peft_reference(reference, tiny_llama_dir, lora_dir, pd.read_parquet(prompts_file))
    np.testing.assert_allclose(stored, np.stack([reps[:, -1] for reps, _ in results]), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(accuracy[[f"logprob_{x}" for x in "ABCD"]].to_numpy(),
                               np.stack([lp for _, lp in results]), atol=1e-4)
    (tmp_path / "base").mkdir()
    _, base_stored, _ = extract(tiny_llama_dir, prompts_file, tmp_path / "base")
    assert np.abs(stored[:, 1:] - base_stored[:, 1:]).max() > 1e-3  # the adapter changes the model
    assert "weights_sha256" in group_attrs(store, "m/c")["adapter"]


def test_prompt_tuning_strips_virtual_tokens(tiny_llama_dir, prompt_tuning_dir, prompts_file, tmp_path, reference,
                                             extract, lens_by_hand):
    n_virtual = 5
    store, stored, accuracy = extract(tiny_llama_dir, prompts_file, tmp_path, adapter=prompt_tuning_dir,
                                      token_sample_layers=[0, 2], token_sample_size=60, seed=4)
    results = peft_reference(reference, tiny_llama_dir, prompt_tuning_dir, pd.read_parquet(prompts_file))
    # The last row of the peft sequence is the prompt's own last token (virtual tokens come first).
    np.testing.assert_allclose(stored, np.stack([reps[:, -1] for reps, _ in results]), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(accuracy[[f"logprob_{x}" for x in "ABCD"]].to_numpy(),
                               np.stack([lp for _, lp in results]), atol=1e-4)
    lens = lens_by_hand(peft_model(tiny_llama_dir, prompt_tuning_dir), load_tokenizer(str(tiny_llama_dir)),
                        pd.read_parquet(prompts_file))
    np.testing.assert_allclose(read_letter_lens(store, "m/c")[0], lens, atol=1e-4, rtol=1e-4)
    for layer in (0, 2):
        sample, frame = read_token_sample(store, "m/c", layer)
        assert len(frame) == 60 and frame["position"].min() >= 0
        expected = np.stack([results[row][0][layer, n_virtual + position]
                             for row, position in zip(frame["row"], frame["position"])])
        np.testing.assert_allclose(sample, expected, atol=1e-4, rtol=1e-4)
