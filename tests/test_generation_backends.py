"""The fast generation backends against the reference (transformers generate)."""

import copy
import sys
from pathlib import Path

import pytest

from moalign import generation_backends
from moalign.generation import DecodingConfig, generate, generate_resumable
from moalign.generation_backends import BackendUnavailableError, resolve_backend
from moalign.models import load_model_and_tokenizer

PROMPTS = ["What is 2 + 2?", "Name a colour.", "Say hello in French, then explain why in two sentences.",
           "List three prime numbers."]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tmp_path_factory):
    """The tiny random Llama with its weights scaled up and saved (ctranslate2 converts a directory):
    as initialised it answers every prompt with the same token, and equal rows would hide a backend
    that mixes them up."""
    import torch

    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, "float32")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    saved = tmp_path_factory.mktemp("scaled_tiny")
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    return load_model_and_tokenizer(saved, "float32")


@pytest.fixture
def ct2_config(tmp_path):
    return dict(backend="ctranslate2", compute_type="float32", cache_dir=str(tmp_path / "ct2"))


def _as_pairs(results):
    return [[(str(c), c.truncated) for c in completions] for completions in results]


def _new_tokens(model, tokenizer, config, prompts=PROMPTS):
    """The backend's new token ids for one left-padded batch of ``prompts``, after the batch seed."""
    import torch

    from moalign.generation import chat_prompt, stop_token_ids

    tokenizer.padding_side = "left"
    encoded = tokenizer([chat_prompt(tokenizer, p) for p in prompts], return_tensors="pt", padding=True,
                        add_special_tokens=False)
    assert (encoded.attention_mask == 0).any(), "the prompts must pad, or left padding is untested"
    torch.manual_seed(config.seed)
    return generation_backends.BACKEND_FUNCTIONS[config.backend](
        model, encoded.input_ids, encoded.attention_mask, config, tokenizer.pad_token_id,
        stop_token_ids(model, tokenizer))


def test_ctranslate2_float32_greedy_matches_transformers_token_for_token(tiny, ct2_config):
    model, tokenizer = tiny
    reference = _new_tokens(model, tokenizer, DecodingConfig(max_new_tokens=12))
    fast = _new_tokens(model, tokenizer, DecodingConfig(max_new_tokens=12, **ct2_config))
    assert len({tuple(row) for row in reference.tolist()}) == len(PROMPTS), "rows must differ, or this proves little"
    assert fast.tolist() == reference.tolist()


def test_ctranslate2_stops_where_transformers_stops(tiny, ct2_config):
    model, tokenizer = tiny
    first = _new_tokens(model, tokenizer, DecodingConfig(max_new_tokens=8))
    # the tokens some rows emit at step 3 end an answer: rows finish at different steps, padded after
    ending = copy.deepcopy(model)
    ending.generation_config.eos_token_id = sorted(set(first[:2, 2].tolist()) | {tokenizer.eos_token_id})
    reference = _new_tokens(ending, tokenizer, DecodingConfig(max_new_tokens=8))
    fast = _new_tokens(ending, tokenizer, DecodingConfig(max_new_tokens=8, **ct2_config))
    assert (reference == tokenizer.pad_token_id).any(), "some row must end early, or stopping is untested"
    assert fast.tolist() == reference.tolist()
    # and generate() reads the same truncated flags from either
    configs = [DecodingConfig(max_new_tokens=8, batch_size=4), DecodingConfig(max_new_tokens=8, batch_size=4, **ct2_config)]
    assert _as_pairs(generate(ending, tokenizer, PROMPTS, configs[1])) == _as_pairs(generate(ending, tokenizer, PROMPTS, configs[0]))


def test_ctranslate2_int8_decodes_well_formed_rows_and_converts_once(tiny, ct2_config, monkeypatch):
    from ctranslate2.converters import TransformersConverter

    model, tokenizer = tiny
    conversions = []
    convert = TransformersConverter.convert
    monkeypatch.setattr(TransformersConverter, "convert",
                        lambda self, *a, **k: conversions.append(a) or convert(self, *a, **k))
    config = DecodingConfig(max_new_tokens=6, num_return_sequences=2, **{**ct2_config, "compute_type": "int8_float32"})
    rows = _new_tokens(model, tokenizer, config)
    assert rows.shape == (2 * len(PROMPTS), 6)
    assert _new_tokens(model, tokenizer, config).tolist() == rows.tolist()  # greedy: each prompt's rows alike, and again
    assert rows[0::2].tolist() == rows[1::2].tolist()
    assert len(conversions) == 1, "the converted model is cached"
    converted = [p for p in Path(ct2_config["cache_dir"]).iterdir() if p.is_dir()]
    assert len(converted) == 1 and (converted[0] / "model.bin").is_file()


def test_ctranslate2_samples_are_seeded_and_vary(tiny, ct2_config):
    model, tokenizer = tiny
    config = DecodingConfig(max_new_tokens=8, do_sample=True, temperature=0.9, top_p=0.95, num_return_sequences=3,
                            seed=5, **ct2_config)
    first = _new_tokens(model, tokenizer, config)
    assert first.shape[0] == 3 * len(PROMPTS)
    assert len({tuple(row) for row in first.tolist()}) > len(PROMPTS), "sampling must vary"
    assert _new_tokens(model, tokenizer, config).tolist() == first.tolist()
    other = _new_tokens(model, tokenizer, DecodingConfig(**{**config.__dict__, "seed": 6}))
    assert other.tolist() != first.tolist()


def test_a_journal_resumes_on_its_backend_and_restarts_on_another(tiny, ct2_config, tmp_path):
    model, tokenizer = tiny
    prompts = dict(zip("abcd", PROMPTS, strict=True))
    journal = tmp_path / "gen.jsonl"
    config = DecodingConfig(max_new_tokens=6, batch_size=1, **ct2_config)
    straight = generate_resumable(model, tokenizer, prompts, config, journal, model_id="m")
    journal.write_text("\n".join(journal.read_text().splitlines()[:2]) + "\n")  # killed after two batches
    assert generate_resumable(model, tokenizer, prompts, config, journal, model_id="m") == straight
    assert len(journal.read_text().splitlines()) == 4  # only the two missing prompts were generated again
    # int8 decodes other tokens: its answers are a journal of their own, not mixed with float32's
    int8 = DecodingConfig(max_new_tokens=6, batch_size=1, **{**ct2_config, "compute_type": "int8_float32"})
    generate_resumable(model, tokenizer, prompts, int8, journal, model_id="m")
    assert len(journal.read_text().splitlines()) == 8
    # the cache folder moves nothing
    moved = DecodingConfig(max_new_tokens=6, batch_size=1, **{**ct2_config, "cache_dir": str(tmp_path / "elsewhere")})
    assert generate_resumable(model, tokenizer, prompts, moved, journal, model_id="m") == straight
    assert len(journal.read_text().splitlines()) == 8


def test_auto_takes_ctranslate2_where_it_can_and_transformers_elsewhere(tiny, monkeypatch):
    model, tokenizer = tiny
    assert resolve_backend("auto", model) == "ctranslate2"
    assert resolve_backend("transformers", model) == "transformers"
    penalised = copy.deepcopy(model)
    penalised.generation_config.repetition_penalty = 1.3
    assert resolve_backend("auto", penalised) == "transformers"
    with pytest.raises(BackendUnavailableError, match="repetition_penalty.*transformers"):
        generate(penalised, tokenizer, PROMPTS[:1], DecodingConfig(max_new_tokens=2, backend="ctranslate2"))
    unsaved = copy.deepcopy(model)
    unsaved.name_or_path = ""
    assert resolve_backend("auto", unsaved) == "transformers"
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import fails as when it is not installed
    assert resolve_backend("auto", model) == "transformers"
    with pytest.raises(BackendUnavailableError, match="needs the ctranslate2 package"):
        generate(model, tokenizer, PROMPTS[:1], DecodingConfig(max_new_tokens=2, backend="ctranslate2"))
    with pytest.raises(ValueError, match="transformers, ctranslate2"):
        resolve_backend("llama")


def test_a_model_ctranslate2_cannot_convert_is_named_and_leaves_nothing(tiny, tmp_path, monkeypatch):
    from ctranslate2.converters import TransformersConverter

    model, tokenizer = tiny

    def unsupported(self, output_dir, **kwargs):
        Path(output_dir).mkdir(parents=True)
        raise ValueError("No conversion is registered for the model configuration LlamaConfig")

    monkeypatch.setattr(TransformersConverter, "convert", unsupported)
    cache = tmp_path / "ct2"
    with pytest.raises(BackendUnavailableError, match=f"cannot convert {model.name_or_path}.*LlamaConfig.*transformers"):
        generate(model, tokenizer, PROMPTS[:1], DecodingConfig(max_new_tokens=2, backend="ctranslate2",
                                                               cache_dir=str(cache)))
    assert [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_vllm_missing_is_named(tiny, monkeypatch):
    model, tokenizer = tiny
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(BackendUnavailableError, match=r"\.\[vllm\]"):
        generate(model, tokenizer, PROMPTS[:1], DecodingConfig(max_new_tokens=2, backend="vllm"))
    assert generation_backends.BACKEND_FUNCTIONS["vllm"] is generation_backends.vllm_generate


def test_the_params_name_every_backend_and_default_to_auto():
    from typing import get_args

    from moalign.config import GenerationParams, ParamsError, load_params, parse_params

    assert get_args(GenerationParams.model_fields["backend"].annotation) == generation_backends.BACKENDS
    assert get_args(GenerationParams.model_fields["compute_type"].annotation) == generation_backends.COMPUTE_TYPES
    params = load_params("params.yaml").generation
    assert (params.backend, params.compute_type) == ("auto", "int8_float32")
    with pytest.raises(ParamsError, match="generation.backend"):
        parse_params({"generation": {"backend": "llama"}})
