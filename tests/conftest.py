import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer random Llama with the SmolLM2 tokenizer and chat template, made once per session."""
    from moalign.models import prepare_base_model

    return prepare_base_model("tiny-random-llama", tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: the tiny model's matrices are so small that a second thread
    only adds contention (up to 10x slower on a busy 2-core machine); results are the same."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def untrained_reward_dir(tmp_path_factory, tiny_model_dir):
    """``make(dims, classes)``: a reward model directory the online methods can load (random heads,
    statistics over four answers), made once per (dims, classes)."""
    made = {}

    def make(dims, classes):
        key = (tuple(dims), tuple(classes))
        if key not in made:
            from transformers import AutoTokenizer

            from moalign.rewards import RewardStats
            from moalign.rewards.model import MultiHeadRewardModel, score_texts

            out = tmp_path_factory.mktemp("reward") / "reward"
            model = MultiHeadRewardModel.from_backbone(tiny_model_dir, dims, classes)
            tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
            model.save(out, tokenizer=tokenizer)
            stats = RewardStats(dims, classes)
            stats.update(score_texts(model, tokenizer, ["Q?"] * 4, ["a", "bb", "ccc dd", "e f g h"]))
            stats.save(out)
            made[key] = out
        return made[key]

    return make


@pytest.fixture
def serve():
    """``serve(**settings)`` starts a loopback fake OpenAI-compatible server
    (tests/fake_openai_server.py); every one is stopped after the test."""
    from tests.fake_openai_server import FakeOpenAIServer

    servers = []

    def start(**settings) -> FakeOpenAIServer:
        server = FakeOpenAIServer(**settings).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def isolated_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as cwd; MLflow's global URIs/experiment (and the env vars they set) restored after."""
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API (SQLite) for the session's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
