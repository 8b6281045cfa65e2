"""Shared fixtures: real agent processes on 127.0.0.1:0, small real models, job builders."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.dispatch.local import LocalAgent, start_agent


@pytest.fixture(scope="module")
def agent_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalAgent]]:
    """Start real agents (module-scoped, stopped at the end); each gets its own work directory."""
    started: list[LocalAgent] = []

    def start(*extra_args: str, workdir: Path | None = None, **kwargs: object) -> LocalAgent:
        wd = workdir or tmp_path_factory.mktemp("agent")
        agent = start_agent(wd, extra_args=list(extra_args), **kwargs)  # type: ignore[arg-type]
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


@pytest.fixture(scope="module")
def agent(agent_factory: Callable[..., LocalAgent]) -> LocalAgent:
    return agent_factory()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from coordinator.models.synthetic import build_cnn, build_mlp, make_dataset

    d = tmp_path_factory.mktemp("models")
    mlp = build_mlp(d / "mlp.onnx", batch=None)
    cnn = build_cnn(d / "cnn.onnx", channels=8, blocks=2, input_hw=16, batch=None)
    null = d / "null.json"
    null.write_text(
        json.dumps({"inputs": [{"name": "input", "shape": [1, 16], "dtype": "float32"}], "num_classes": 10})
    )
    garbage = d / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf at all \x00\xff" * 100)
    truncated = d / "truncated.onnx"
    truncated.write_bytes(cnn.read_bytes()[: cnn.stat().st_size // 2])
    return {
        "mlp": mlp,
        "mlp_data": make_dataset(d / "mlp.npz", model_path=mlp, n=64),
        "cnn": cnn,
        "cnn_data": make_dataset(d / "cnn.npz", model_path=cnn, n=32),
        "null": null,
        "garbage": garbage,
        "truncated": truncated,
    }
