"""Generation that survives a crash: journaled per batch, resumed without repeating a prompt."""

import pytest

from moalign import generation
from moalign.generation import DecodingConfig, generate_resumable
from moalign.models import model_fingerprint
from moalign.models import load_model_and_tokenizer

PROMPTS = {"a": "What is 2 + 2?", "b": "Name a colour.", "c": "Say hello in French."}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model_and_tokenizer(tiny_model_dir, "float32")


def test_a_killed_run_resumes_with_only_the_missing_prompts(tiny, tiny_model_dir, tmp_path, monkeypatch):
    model, tokenizer = tiny
    config = DecodingConfig(max_new_tokens=5, batch_size=1)
    journal = tmp_path / "gen.jsonl"
    model_id = model_fingerprint(tiny_model_dir)
    straight = generate_resumable(model, tokenizer, PROMPTS, config, tmp_path / "straight.jsonl", model_id=model_id)
    assert set(straight) == set(PROMPTS)

    generate_resumable(model, tokenizer, PROMPTS, config, journal, model_id=model_id)
    lines = journal.read_text().splitlines()
    journal.write_text(lines[0] + "\n" + lines[1][:20])  # killed while writing the second batch
    asked = []
    real = generation.generate

    def spy(model, tokenizer, prompts, config, description="", on_batch=None, done=()):
        def record(batch):
            asked.extend(prompts[position] for position in batch)
            on_batch(batch)

        return real(model, tokenizer, prompts, config, description, on_batch=record, done=done)

    monkeypatch.setattr(generation, "generate", spy)
    resumed = generate_resumable(model, tokenizer, PROMPTS, config, journal, model_id=model_id)
    assert len(asked) == 2  # the first batch came from the journal
    assert resumed == straight  # greedy: the same answers as the uninterrupted run
    asked.clear()
    assert generate_resumable(model, tokenizer, PROMPTS, config, journal, model_id=model_id) == straight
    assert asked == []
    # another model (or decoding) never reuses these answers
    generate_resumable(model, tokenizer, PROMPTS, config, journal, model_id="retrained")
    assert len(asked) == 3


def test_a_resumed_sampling_run_draws_the_uninterrupted_runs_samples(tiny, tiny_model_dir, tmp_path):
    model, tokenizer = tiny
    config = DecodingConfig(max_new_tokens=6, do_sample=True, temperature=1.5, num_return_sequences=2,
                            batch_size=1, seed=3)
    straight = generate_resumable(model, tokenizer, PROMPTS, config, tmp_path / "straight.jsonl", model_id="m")
    assert len({c for cs in straight.values() for c in cs}) > 1, "sampling must vary, or this test proves nothing"
    journal = tmp_path / "gen.jsonl"
    generate_resumable(model, tokenizer, PROMPTS, config, journal, model_id="m")
    # killed after the last batch: only it is sampled again (a fresh run would draw batch 0's samples)
    journal.write_text("\n".join(journal.read_text().splitlines()[:-1]) + "\n")
    assert generate_resumable(model, tokenizer, PROMPTS, config, journal, model_id="m") == straight


def test_sampled_answers_of_another_prompt_list_are_not_reused(tiny, tmp_path):
    model, tokenizer = tiny
    config = DecodingConfig(max_new_tokens=4, do_sample=True, batch_size=2)
    journal = tmp_path / "gen.jsonl"
    generate_resumable(model, tokenizer, PROMPTS, config, journal, model_id="m")
    fewer = {key: PROMPTS[key] for key in ("a", "b")}
    generate_resumable(model, tokenizer, fewer, config, journal, model_id="m")
    # with "c" gone the batches (and their seeds) differ: "a" and "b" are sampled again
    assert len(journal.read_text().splitlines()) == 5


def test_fingerprint_follows_the_weights(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert model_fingerprint(copy) == model_fingerprint(tiny_model_dir)
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_fingerprint(copy) != model_fingerprint(tiny_model_dir)


def test_a_model_without_a_chat_template_is_named(tiny):
    from moalign.generation import NoChatTemplateError, chat_prompt

    _, tokenizer = tiny
    saved = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        with pytest.raises(NoChatTemplateError, match="no chat template.*tokenizer_config.json"):
            chat_prompt(tokenizer, "hi")
    finally:
        tokenizer.chat_template = saved


def test_completions_say_whether_the_length_limit_cut_them_off(tiny, tmp_path, monkeypatch):
    import copy
    import json

    model, tokenizer = tiny
    config = DecodingConfig(max_new_tokens=4, batch_size=2)
    prompts = list(PROMPTS.values())
    cut = generation.generate(model, tokenizer, prompts, config)
    # the same model told that whatever it emits first ends the answer: every answer is finished
    first_ids = {
        int(model.generate(**tokenizer(generation.chat_prompt(tokenizer, p), return_tensors="pt", add_special_tokens=False),
                           max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0, -1])
        for p in prompts
    }
    assert tokenizer.eos_token_id not in first_ids, "the tiny model must not end at once, or nothing is cut"
    ending = copy.deepcopy(model)
    ending.generation_config.eos_token_id = sorted(first_ids | {tokenizer.eos_token_id})
    ended = generation.generate(ending, tokenizer, prompts, config)
    assert [c.truncated for [c] in ended] == [False] * 3
    assert [c.truncated for [c] in cut] == [True] * 3  # 4 tokens and no end token among them

    # the journal keeps the flag; entries written before the flag existed are generated again
    journal = tmp_path / "gen.jsonl"
    first = generate_resumable(model, tokenizer, PROMPTS, config, journal, model_id="m")
    again = generate_resumable(model, tokenizer, PROMPTS, config, journal, model_id="m")
    assert [c.truncated for [c] in again.values()] == [c.truncated for [c] in first.values()] == [True] * 3
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    journal.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "truncated"}) + "\n" for e in entries))
    asked = []
    real = generation.generate
    monkeypatch.setattr(generation, "generate", lambda *args, **kwargs: asked.append(1) or real(*args, **kwargs))
    generate_resumable(model, tokenizer, PROMPTS, config, journal, model_id="m")
    assert asked, "journal entries without the flag must not be trusted"
