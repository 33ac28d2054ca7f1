"""Checkpoints: weights_only-safe content, atomic files, RNG states, discovery and pruning."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from amgp_fx.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    check_weights_only_safe,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)


def _state(step: int = 3) -> dict:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return {"format": CHECKPOINT_FORMAT, "step": step, "model": model.state_dict(),
            "optimizers": [optimizer.state_dict()], "rng": capture_rng_state(), "hooks": [None, {"kept": [1, 2]}]}


def test_round_trip_with_weights_only(tmp_path):
    state = _state()
    path = save_checkpoint(checkpoint_path(tmp_path, 3), state)
    loaded = load_checkpoint(path)  # torch.load(weights_only=True) inside
    assert loaded["step"] == 3 and loaded["hooks"] == [None, {"kept": [1, 2]}]
    for name, tensor in state["model"].items():
        assert torch.equal(loaded["model"][name], tensor)
    assert loaded["optimizers"][0]["state"][0]["exp_avg"].shape == (2, 3)


def test_unsafe_values_are_refused_before_writing(tmp_path):
    class Custom:
        pass

    state = _state()
    state["hooks"] = [{"schedule": Custom()}]
    with pytest.raises(TypeError, match=r"checkpoint\['hooks'\]\[0\]\['schedule'\] is a Custom"):
        save_checkpoint(tmp_path / "checkpoint_000000001.pt", state)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="has a key of type tuple"):
        check_weights_only_safe({(1, 2): 3})


def test_load_refuses_other_format(tmp_path):
    path = tmp_path / "checkpoint_000000001.pt"
    torch.save({"format": 99}, path)
    with pytest.raises(ValueError, match="checkpoint format 99, this code reads 1"):
        load_checkpoint(path)


def test_rng_states_restore_every_generator():
    torch.manual_seed(0)
    np.random.seed(1)
    random.seed(2)
    state = capture_rng_state()
    draws = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.standard_normal())
    check_weights_only_safe(state)
    restore_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.standard_normal())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2] == again[2] and draws[3] == again[3]


def test_restore_survives_weights_only_round_trip(tmp_path):
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    path = save_checkpoint(tmp_path / "checkpoint_000000002.pt", {"format": CHECKPOINT_FORMAT, "rng": capture_rng_state()})
    expected = (torch.rand(2), np.random.standard_normal(2), random.random())
    restore_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(2), expected[0])
    assert np.array_equal(np.random.standard_normal(2), expected[1]) and random.random() == expected[2]


def test_discovery_and_pruning(tmp_path):
    for step in (5, 100, 20):
        save_checkpoint(checkpoint_path(tmp_path, step), {"format": CHECKPOINT_FORMAT, "step": step})
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert [path.name for path in list_checkpoints(tmp_path)] == [
        "checkpoint_000000005.pt", "checkpoint_000000020.pt", "checkpoint_000000100.pt"]
    assert latest_checkpoint(tmp_path).name == "checkpoint_000000100.pt"
    prune_checkpoints(tmp_path, keep=2)
    assert [load_checkpoint(path)["step"] for path in list_checkpoints(tmp_path)] == [20, 100]
    assert latest_checkpoint(tmp_path / "missing") is None
