"""Training on several processes: the training stages rerun themselves under ``accelerate launch``.

With ``compute.num_processes`` above 1, a stage command started the ordinary way (``dvc repro``,
``python -m components.train_policy``) calls :func:`relaunch`, which runs the same command again under
``accelerate launch`` with ``compute.accelerate_config`` and returns its exit code; inside the launched
processes :func:`relaunch` returns None and the stage trains. The library then needs only two guards:
:func:`main_process_first` around a shared folder's setup, and :func:`is_main_process` before writing
what one process writes (the policy, its log, the MLflow run).

On a machine without CUDA the processes use torch's gloo backend on the CPU. Not ``accelerate launch
--cpu``: that starts a single process unless an MPI launcher is configured, so moalign launches
through torchrun (the config's launcher) with ``ACCELERATE_USE_CPU=true`` instead.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/accelerate/ddp.yaml"
#: accelerate's distributed types whose processes each hold a shard of the weights, not a copy
SHARDED = ("FSDP", "DEEPSPEED")
#: set in every process a launcher starts: torchrun and DeepSpeed set LOCAL_RANK, accelerate launch
#: sets ACCELERATE_MIXED_PRECISION even for a single process
_LAUNCH_MARKERS = ("LOCAL_RANK", "ACCELERATE_MIXED_PRECISION")


def inside_launch() -> bool:
    """Whether this process was started by a launcher (accelerate launch, torchrun, deepspeed)."""
    return any(marker in os.environ for marker in _LAUNCH_MARKERS)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes what a training run writes once."""
    return int(os.environ.get("RANK", "0")) == 0


def distributed_type(config_file: str | os.PathLike[str]) -> str:
    """The ``distributed_type`` of an accelerate config file (MULTI_GPU, FSDP, DEEPSPEED, NO...)."""
    import yaml

    loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))
    if not isinstance(loaded, dict) or "distributed_type" not in loaded:
        raise ValueError(f"{config_file} is not an accelerate config: it has no distributed_type")
    return str(loaded["distributed_type"]).upper()


def launch_argv(module: str, args: Sequence[str], *, num_processes: int, config_file=None) -> list[str]:
    """``python -m accelerate.commands.launch ... --module <module> <args>``: the stage rerun on
    ``num_processes`` processes (in all, over every machine of the config)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file or DEFAULT_CONFIG),
        "--num_processes", str(num_processes), "--module", module, *args,
    ]


def launch_env() -> dict[str, str]:
    """The launched processes' environment: this one's, with the CPU flag where there is no GPU."""
    import torch

    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"  # gloo on the CPU; without it accelerate would not go distributed
    return env


def distributed_state():
    """accelerate's process state, set up once per process: the process group, and this process's GPU
    selected before a model is loaded onto ``cuda``."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def relaunch(compute, module: str, argv: Sequence[str] | None = None, *, gathers_shards: bool = True) -> int | None:
    """Run stage ``module`` again under ``accelerate launch`` when ``compute`` (the ``compute`` section of
    params.yaml) asks for more than one process, and return that run's exit code; None when the stage
    should train here: one process, or already inside a launch (whose process group is then set up).
    A stage that cannot gather sharded weights (not ``gathers_shards``) runs with DDP instead of FSDP or
    DeepSpeed."""
    if inside_launch():
        if world_size() != compute.num_processes:
            logger.warning("compute.num_processes is %d but this launch has %d processes: training on %d",
                           compute.num_processes, world_size(), world_size())
        distributed_state()
        return None
    if compute.num_processes == 1:
        return None
    config_file = compute.accelerate_config or DEFAULT_CONFIG
    if not gathers_shards and distributed_type(config_file) in SHARDED:
        logger.info("%s shards the weights, which %s does not gather: it runs with %s", config_file, module,
                    DEFAULT_CONFIG)
        config_file = DEFAULT_CONFIG
    command = launch_argv(module, sys.argv[1:] if argv is None else argv, num_processes=compute.num_processes,
                          config_file=config_file)
    logger.info("training on %d processes: %s", compute.num_processes, shlex.join(command))
    return subprocess.call(command, env=launch_env())


@contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block, then the others do (after it, never at the same time); a
    plain block outside a launch."""
    if not inside_launch():
        yield
        return
    with distributed_state().main_process_first():
        yield
