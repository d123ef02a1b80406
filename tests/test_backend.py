"""The transformers backend on a tiny random Llama: span splitting and decoding."""

from __future__ import annotations

import pytest
import torch

from ttsa_guard.config import GenerationConfig
from ttsa_guard.errors import InvalidInputError, ModelLoadError
from ttsa_guard.backends.transformers import TransformersBackend

MESSAGES = [{"role": "user", "content": "Tell me about rain."}]
PROMPTS = ["Hi", "Tell me a long story about the sea and the wind.", "Why is the sky blue?"]


def hf_greedy(backend: TransformersBackend, text: str, max_new_tokens: int) -> str:
    """Greedy text from transformers' own generate, the reference for the custom decoder."""
    ids = backend.tokenizer(text, add_special_tokens=False, return_tensors="pt")
    output = backend.model.generate(
        **ids,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=backend.tokenizer.eos_token_id,
        pad_token_id=backend.tokenizer.pad_token_id,
    )
    return backend.tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_encode_splits_around_last_user_content(tiny_backend):
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]
    prompt = tiny_backend.encode(messages)

    joint = tiny_backend.tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
    assert torch.cat([prompt.prefix_ids, prompt.editable_ids, prompt.suffix_ids]).tolist() == joint
    assert tiny_backend.tokenizer.decode(prompt.editable_ids) == "second question"
    assert prompt.editable_text == "second question"
    assert prompt.editable_embeds.shape == (len(prompt.editable_ids), 32)
    assert prompt.text.endswith("<|im_start|>assistant\n")


def test_encode_without_user_message_raises(tiny_backend):
    with pytest.raises(InvalidInputError, match="no user message"):
        tiny_backend.encode([{"role": "system", "content": "Be brief."}])


def test_encode_whitespace_content_raises(tiny_backend):
    with pytest.raises(InvalidInputError, match="non-empty text"):
        tiny_backend.encode([{"role": "user", "content": "  \n"}])


def test_backend_without_chat_template_raises(tiny_model, tiny_tokenizer):
    tokenizer = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer)
    with pytest.raises(ModelLoadError, match="no chat template"):
        TransformersBackend(tiny_model, tokenizer, name="bare")


def test_plain_generation_matches_transformers_generate(tiny_backend):
    prompt = tiny_backend.encode(MESSAGES)
    config = GenerationConfig(max_new_tokens=12)

    generated = tiny_backend.generate(prompt, None, config)[0]

    assert generated.text == hf_greedy(tiny_backend, prompt.text, 12)
    assert len(generated.token_ids) <= 12


@pytest.mark.parametrize("reuse_prefix_cache", [True, False])
@pytest.mark.parametrize("drop_finished", [True, False])
def test_batched_generation_matches_one_by_one(tiny_backend, reuse_prefix_cache, drop_finished):
    prompt = tiny_backend.encode(MESSAGES)
    torch.manual_seed(1)
    batch = prompt.editable_embeds.unsqueeze(0) + 0.5 * torch.randn(6, *prompt.editable_embeds.shape)
    fast = GenerationConfig(max_new_tokens=10, reuse_prefix_cache=reuse_prefix_cache, drop_finished=drop_finished)
    reference = GenerationConfig(max_new_tokens=10, reuse_prefix_cache=False, drop_finished=False)

    batched = [g.text for g in tiny_backend.generate(prompt, batch, fast)]
    one_by_one = [tiny_backend.generate(prompt, batch[i : i + 1], reference)[0].text for i in range(6)]

    assert batched == one_by_one
    assert len(set(batched)) > 1, "perturbations should change some responses"


def test_padded_batch_matches_one_by_one(tiny_backend):
    config = GenerationConfig(max_new_tokens=10)
    prompts = [tiny_backend.encode([{"role": "user", "content": text}]) for text in PROMPTS]

    padded = [g.text for g in tiny_backend.generate_padded([p.input_embeds() for p in prompts], config)]
    single = [tiny_backend.generate(p, None, config)[0].text for p in prompts]

    assert len({p.num_tokens for p in prompts}) == 3, "prompts must differ in length to exercise padding"
    assert padded == single


def test_stop_string_ends_and_is_cut(tiny_backend):
    prompt = tiny_backend.encode(MESSAGES)
    free = tiny_backend.generate(prompt, None, GenerationConfig(max_new_tokens=12))[0].text
    stop = free[3:5]

    stopped = tiny_backend.generate(prompt, None, GenerationConfig(max_new_tokens=12, stop=[stop]))[0]

    assert stopped.text == free[: free.find(stop)]
    assert stopped.finish_reason == "stop"


def test_sampling_is_reproducible_with_seed(tiny_backend):
    prompt = tiny_backend.encode(MESSAGES)
    config = GenerationConfig(max_new_tokens=10, temperature=1.5, seed=7)

    first = tiny_backend.generate(prompt, None, config)[0].text
    second = tiny_backend.generate(prompt, None, config)[0].text

    assert first == second


def test_nearest_tokens_reads_unperturbed_prompt_back(tiny_backend):
    prompt = tiny_backend.encode(MESSAGES)

    assert tiny_backend.nearest_tokens(prompt.editable_embeds) == "Tell me about rain."
