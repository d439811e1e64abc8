"""How a batch of tokenised prompts becomes new token ids: the backends behind :func:`moalign.generation.generate`.

Every backend takes left-padded ``input_ids``/``attention_mask`` and returns the new tokens as
``generate`` does: ``num_return_sequences`` rows per prompt (adjacent), each padded with
``pad_token_id`` after its first stop token.

- ``transformers``: ``model.generate``, the reference.
- ``ctranslate2``: CTranslate2's C++ decoder on a converted copy of the model directory (converted
  once per model content and compute type into ``generation.cache_dir``). ``generation.compute_type`` int8_float32
  (int8 weights, VNNI kernels) is what makes it 2x ``generate`` at batch 32 on a CPU; float32 decodes
  token for token what ``generate`` decodes and is about as fast at batch 32 (benchmarks/README.md).
- ``vllm``: a vLLM engine on the model's directory, for GPU workers (optional extra ``vllm``).

Why not a hand-written decode loop: one that drove the same forward and KV cache as ``generate``
(and a static cache with ``torch.compile``) measured no faster on a 2-core CPU, where the fp32
matrix products are the cost; only fewer bits per weight move that, which CTranslate2 brings with
kernels of its own.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol, get_args

import torch

logger = logging.getLogger(__name__)

Backend = Literal["auto", "transformers", "ctranslate2", "vllm"]
BACKENDS: tuple[str, ...] = get_args(Backend)
ComputeType = Literal["int8_float32", "float32", "int8", "bfloat16", "float16", "int8_bfloat16", "int8_float16"]
COMPUTE_TYPES: tuple[str, ...] = get_args(ComputeType)


class DecodingConfig(Protocol):
    """What a backend reads of :class:`moalign.generation.DecodingConfig` (which imports this module)."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    num_return_sequences: int
    compute_type: str
    cache_dir: str


class BackendUnavailableError(RuntimeError):
    """The generation backend asked for cannot run here (not installed, or the model needs what it lacks)."""


def resolve_backend(name: str, model=None) -> str:
    """The backend that runs: ``auto`` is ctranslate2 where it is installed and can take ``model``
    (a saved directory, no generation_config it would ignore), else transformers. vLLM is only
    ever used when asked for, since it loads a second copy of the model on a GPU."""
    if name not in BACKENDS:
        raise ValueError(f"generation backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name != "auto":
        return name
    if model is None or _ctranslate2_module() is None:
        return "transformers"
    reason = _ctranslate2_refusal(model)
    if reason:
        logger.info("generation.backend auto: transformers, since ctranslate2 %s", reason)
        return "transformers"
    return "ctranslate2"


def transformers_generate(model, input_ids, attention_mask, config: DecodingConfig, pad_token_id: int,
                          stop_ids: Sequence[int]) -> torch.Tensor:
    sampling = dict(temperature=config.temperature, top_p=config.top_p) if config.do_sample else {}
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=config.max_new_tokens,
        do_sample=config.do_sample,
        num_return_sequences=config.num_return_sequences,
        pad_token_id=pad_token_id,
        **sampling,
    )
    return output[:, input_ids.shape[1]:]


def _unpadded(input_ids, attention_mask) -> list[list[int]]:
    """Each left-padded row's token ids without its padding: what the engines that batch by
    themselves take."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(input_ids.cpu(), attention_mask.cpu(), strict=True)]


def _padded(rows: list[list[int]], pad_token_id: int, device) -> torch.Tensor:
    """New-token rows padded after their end, as ``generate`` returns them."""
    width = max(1, max(len(ids) for ids in rows))
    return torch.tensor([ids + [pad_token_id] * (width - len(ids)) for ids in rows], device=device)


def _top_k(model) -> int:
    """The top-k ``generate`` samples with: the model's generation config, 50 when unset."""
    top_k = getattr(getattr(model, "generation_config", None), "top_k", None)
    return 50 if top_k is None else top_k


# ------------------------------------------------------------------------------------------------
# ctranslate2

# generation_config fields whose non-neutral value makes `generate` change its tokens in a way the
# other backends do not copy: such a model is refused (auto falls back to transformers)
_NEUTRAL = {
    "repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
    "min_length": (None, 0), "min_new_tokens": (None, 0), "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,), "sequence_bias": (None,), "renormalize_logits": (None, False),
    "encoder_repetition_penalty": (None, 1.0), "remove_invalid_values": (None, False),
    "top_h": (None,), "min_p": (None,), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
}


def _ctranslate2_module():
    try:
        import ctranslate2
    except ImportError:
        return None
    return ctranslate2


def _ctranslate2_refusal(model) -> str | None:
    """Why ctranslate2 cannot decode ``model`` as ``generate`` would, or None."""
    model_dir = Path(getattr(model, "name_or_path", "") or "")
    if not (model_dir / "config.json").is_file():
        return f"converts a saved model directory and this model's ({str(model_dir) or 'none'}) has no config.json"
    settings = getattr(model, "generation_config", None)
    odd = {field: getattr(settings, field, None) for field in _NEUTRAL
           if getattr(settings, field, None) not in _NEUTRAL[field]}
    if odd:
        return f"does not apply the model's generation_config {odd}"
    return None


def converted_model_dir(model_dir: str | os.PathLike[str], cache_dir: str | os.PathLike[str],
                        compute_type: str) -> Path:
    """The CTranslate2 copy of ``model_dir``, its weights stored as ``compute_type`` (quantising at
    load costs seconds, loading stored int8 a tenth of one), converted on first use under
    ``cache_dir`` and keyed by the directory's content: a retrained policy in the same folder gets a
    conversion of its own. Written to a temporary folder and renamed, under a lock, so a crash or a
    second process never leaves half a model."""
    from filelock import FileLock

    from moalign.models import model_fingerprint

    target = Path(cache_dir) / f"{model_fingerprint(model_dir)}-{compute_type}"
    if (target / "model.bin").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "model.bin").is_file():
            return target
        from ctranslate2.converters import TransformersConverter

        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        logger.info("converting %s for ctranslate2 into %s", model_dir, target)
        try:
            TransformersConverter(str(model_dir), low_cpu_mem_usage=True).convert(
                str(partial), quantization=compute_type, force=True)
        except Exception as error:  # the converter raises ValueError/NotImplementedError/KeyError by architecture
            shutil.rmtree(partial, ignore_errors=True)
            raise BackendUnavailableError(
                f"ctranslate2 cannot convert {model_dir} ({type(error).__name__}: {error}); "
                "set generation.backend to transformers for this model"
            ) from error
        partial.rename(target)
    return target


def _ctranslate2_generator(converted: str, device: str, compute_type: str, threads: int):
    import ctranslate2

    return ctranslate2.Generator(converted, device=device, compute_type=compute_type, intra_threads=threads)


# greedy decoding reuses one model at a time (evaluation moves from policy to policy)
_cached_ctranslate2_generator = functools.lru_cache(maxsize=1)(_ctranslate2_generator)


@functools.lru_cache(maxsize=4)
def _vocabulary(converted: str) -> list[str]:
    return json.loads((Path(converted) / "vocabulary.json").read_text(encoding="utf-8"))


def ctranslate2_generate(model, input_ids, attention_mask, config: DecodingConfig, pad_token_id: int,
                         stop_ids: Sequence[int]) -> torch.Tensor:
    ctranslate2 = _ctranslate2_module()
    if ctranslate2 is None:
        raise BackendUnavailableError(
            "generation.backend ctranslate2 needs the ctranslate2 package (pip install -e .); "
            "or set generation.backend to auto or transformers"
        )
    reason = _ctranslate2_refusal(model)
    if reason:
        raise BackendUnavailableError(f"generation.backend ctranslate2 {reason}; set generation.backend to transformers")
    device = "cuda" if model.device.type == "cuda" else "cpu"
    converted = str(converted_model_dir(model.name_or_path, config.cache_dir, config.compute_type))
    vocabulary = _vocabulary(converted)
    prompts = [[vocabulary[i] for i in ids] for ids in _unpadded(input_ids, attention_mask)]
    # generate's layout: each prompt's num_return_sequences rows side by side
    prompts = [tokens for tokens in prompts for _ in range(config.num_return_sequences)]
    if config.do_sample:
        sampling = dict(sampling_topk=_top_k(model), sampling_topp=config.top_p,
                        sampling_temperature=config.temperature)
        # each worker thread seeds its random generator once, when it first draws: a model loaded
        # after the batch's seed (which generate() has just set) draws this batch's samples
        # whatever ran before, as generate() does (loading stored int8 weights takes 0.1-0.3 s)
        ctranslate2.set_random_seed(torch.initial_seed() % 2**32)
        generator = _ctranslate2_generator(converted, device, config.compute_type, torch.get_num_threads())
    else:
        sampling = dict(sampling_topk=1)
        generator = _cached_ctranslate2_generator(converted, device, config.compute_type, torch.get_num_threads())
    results = generator.generate_batch(
        prompts, max_length=config.max_new_tokens, include_prompt_in_result=False,
        end_token=[vocabulary[i] for i in stop_ids], return_end_token=True, **sampling,
    )
    rows = [result.sequences_ids[0][: config.max_new_tokens] for result in results]
    return _padded(rows, pad_token_id, input_ids.device)


# ------------------------------------------------------------------------------------------------
# vllm


@functools.lru_cache(maxsize=1)
def _vllm_engine(model_dir: str, dtype: str):
    import vllm  # type: ignore[import-not-found]

    return vllm.LLM(model=model_dir, dtype=dtype, seed=0)


def vllm_generate(model, input_ids, attention_mask, config: DecodingConfig, pad_token_id: int,
                  stop_ids: Sequence[int]) -> torch.Tensor:
    """A vLLM engine on the directory ``model`` was loaded from (its own copy of the weights, on the
    GPU): the prompts' token ids in, the answers' ids out, padded as ``generate`` pads them."""
    try:
        import vllm  # type: ignore[import-not-found]
    except ImportError:
        raise BackendUnavailableError(
            "generation.backend vllm needs vLLM on a GPU worker (pip install -e '.[vllm]'); "
            "elsewhere set generation.backend to auto or transformers"
        ) from None
    model_dir = getattr(model, "name_or_path", "")
    engine = _vllm_engine(str(model_dir), str(model.dtype).removeprefix("torch."))
    prompts = [{"prompt_token_ids": ids} for ids in _unpadded(input_ids, attention_mask)]
    params = vllm.SamplingParams(
        n=config.num_return_sequences,
        temperature=config.temperature if config.do_sample else 0.0,
        top_p=config.top_p if config.do_sample else 1.0,
        top_k=_top_k(model) if config.do_sample else -1,
        max_tokens=config.max_new_tokens,
        stop_token_ids=list(stop_ids),
        seed=torch.initial_seed(),  # the batch's seed, which generate() has just set
    )
    rows = []
    for request in engine.generate(prompts, params, use_tqdm=False):
        for completion in request.outputs:
            ids = list(completion.token_ids)
            if completion.finish_reason == "stop" and (not ids or ids[-1] not in stop_ids):
                ids.append(stop_ids[0])  # vLLM may leave the stop token out; the caller reads it as "ended"
            rows.append(ids[: config.max_new_tokens])
    return _padded(rows, pad_token_id, input_ids.device)


BACKEND_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "transformers": transformers_generate,
    "ctranslate2": ctranslate2_generate,
    "vllm": vllm_generate,
}
