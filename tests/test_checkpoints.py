"""Tests for toyrec_helpers.checkpoints (atomic, safe, checked checkpoints)."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from synthetic import make_features

from toyrec_helpers import checkpoints
from toyrec_helpers.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from toyrec_helpers.meta import MetaConfig, init_inner_lrs
from toyrec_helpers.models import FeatureRecommender

FEATURES = make_features(n_users=10, n_items=12, seed=0)
CONFIG = MetaConfig(inner_steps=3, meta_sgd="element")


def make_model(hidden=(8,)) -> FeatureRecommender:
    torch.manual_seed(0)
    return FeatureRecommender(*FEATURES, embedding_dim=4, hidden=hidden)


def save(path, model=None, **kwargs):
    model = model or make_model()
    params = dict(model.named_parameters())
    kwargs.setdefault("inner_lrs", init_inner_lrs(model, CONFIG))
    kwargs.setdefault("extra", {"epoch": 7, "val_mse": 0.5})
    return save_checkpoint(path, params, CONFIG, model.model_config, **kwargs)


def test_round_trip(tmp_path):
    model = make_model()
    path = save(tmp_path / "ckpt.pt", model)
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind
    raw = torch.load(path, weights_only=True)  # safe loading works on the raw file
    assert raw["format"] == checkpoints.FORMAT
    loaded = load_checkpoint(path, model=model, expected_config=CONFIG)
    assert loaded.path == str(path)
    for n, p in model.named_parameters():
        assert torch.equal(loaded.params[n], p.detach())
    assert set(loaded.inner_lrs) == set(loaded.params)
    assert MetaConfig.from_dict(loaded.config) == CONFIG
    assert loaded.model_config == model.model_config
    assert loaded.extra == {"epoch": 7, "val_mse": 0.5}
    fresh = make_model()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(loaded.params)
    users, items = torch.arange(10), torch.arange(10)
    assert torch.equal(fresh(users, items), model(users, items))


def test_existing_file_is_not_overwritten_without_permission(tmp_path):
    path = tmp_path / "ckpt.pt"
    save(path, extra={"run": 1})
    with pytest.raises(FileExistsError, match="ckpt.pt.*overwrite=True"):
        save(path, extra={"run": 2})
    assert load_checkpoint(path).extra == {"run": 1}
    save(path, extra={"run": 3}, overwrite=True)
    assert load_checkpoint(path).extra == {"run": 3}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path / "ckpt.pt")
    assert os.listdir(tmp_path) == []


def test_save_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder.*missing"):
        save(tmp_path / "missing" / "ckpt.pt")
    with pytest.raises(TypeError, match="'extra' must be JSON-serialisable"):
        save(tmp_path / "ckpt.pt", extra={"tensor": torch.zeros(1)})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_file_is_reported(tmp_path, damage):
    path = save(tmp_path / "ckpt.pt")
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 9,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="ckpt.pt.*not a toyrec checkpoint"):
        load_checkpoint(path)


def test_foreign_torch_file_is_reported(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="weights.pt.*not a toyrec checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_different_configuration_names_the_keys(tmp_path):
    path = save(tmp_path / "ckpt.pt")
    other = dataclasses.replace(CONFIG, inner_lr=0.5, adapt="head")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, expected_config=other)
    message = str(info.value)
    assert "ckpt.pt" in message and "different configuration" in message
    assert "adapt: checkpoint has 'all', expected 'head'" in message
    assert "inner_lr: checkpoint has 0.05, expected 0.5" in message
    assert "inner_steps" not in message


def test_different_model_is_reported(tmp_path):
    path = save(tmp_path / "ckpt.pt")
    wider = make_model(hidden=(16,))
    with pytest.raises(CheckpointError, match=r"different model: hidden: checkpoint has "
                                              r"\[8\], expected \[16\]"):
        load_checkpoint(path, model=wider)
    with pytest.raises(CheckpointError, match=r"wrong shapes: mlp.0.bias: checkpoint \(8,\), "
                                              r"model \(16,\)"):
        load_checkpoint(path, model=wider, expected_model_config=make_model().model_config)


def test_missing_and_extra_parameters_are_reported(tmp_path):
    model = make_model()
    params = dict(model.named_parameters())
    params["mlp.9.weight"] = params.pop("mlp.0.bias")
    path = save_checkpoint(tmp_path / "ckpt.pt", params, CONFIG, model.model_config)
    with pytest.raises(CheckpointError,
                       match=r"missing parameters \['mlp.0.bias'\]; unexpected parameters "
                             r"\['mlp.9.weight'\]"):
        load_checkpoint(path, model=model)
