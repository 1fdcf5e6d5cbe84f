"""Tests for toyrec_helpers.distributed: sharding, one data-parallel meta-step with two
processes (gloo over loopback) equal to the single-process meta-step, and `main --data`
equal to meta_train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from toyrec_helpers.bench import make_problem
from toyrec_helpers.checkpoints import load_checkpoint
from toyrec_helpers.distributed import (
    distributed_meta_step,
    load_problem,
    main,
    make_meta_optimizer,
    run_local,
    shard,
)
from toyrec_helpers.meta import MetaConfig, meta_loss, meta_train


def single_process_step(meta_batch: int, config: MetaConfig) -> dict[str, torch.Tensor]:
    """The reference: one ordinary meta-step on the tasks `main --sizes tiny` uses."""
    model, batch, _ = make_problem("tiny", meta_batch, seed=0)
    model = model.double()
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    optimizer = make_meta_optimizer(params, config)
    meta_loss(model, params, batch, config).backward()
    optimizer.step()
    return {n: p.detach() for n, p in params.items()}


def test_shard_covers_every_task_once():
    _, batch, _ = make_problem("tiny", 7, seed=0)
    for world in (1, 2, 3, 8):
        users = torch.cat([shard(batch, r, world).users for r in range(world)])
        assert torch.equal(users, batch.users)
    with pytest.raises(ValueError, match="rank"):
        shard(batch, 2, 2)


def test_step_without_process_group_is_an_ordinary_meta_step():
    config = MetaConfig(inner_steps=2, order="second")
    expected = single_process_step(5, config)
    model, batch, _ = make_problem("tiny", 5, seed=0)
    model = model.double()
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    loss = distributed_meta_step(model, params, make_meta_optimizer(params, config), batch,
                                 config)
    assert loss > 0
    for name, value in expected.items():
        torch.testing.assert_close(params[name].detach(), value, rtol=1e-12, atol=1e-12)


def test_two_processes_match_one_process(tmp_path):
    # 7 tasks: an uneven split (3 + 4), so the per-rank scaling n_r / n matters.
    out = tmp_path / "params.pt"
    run_local(["--sizes", "tiny", "--steps", "1", "--meta-batch", "7", "--inner-steps", "2",
               "--dtype", "float64", "--device", "cpu", "--save-params", str(out)], nprocs=2)
    got = torch.load(out)
    expected = single_process_step(7, MetaConfig(inner_steps=2, order="second",
                                                 meta_batch=7))
    assert set(got) == set(expected)
    changed = 0
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-10, atol=1e-12)
        changed += int(not torch.equal(value, make_problem("tiny", 7)[0].double()
                                       .state_dict()[name]))
    assert changed == len(expected)  # the step moved every parameter tensor


def test_single_process_data_run_is_meta_train(tmp_path):
    # `main --data` is meta_train with the all-reduce hook: one process of it gives exactly
    # meta_train's result (same torch.randperm order, validation, Meta-SGD, patience).
    data = Path(__file__).resolve().parent.parent / "data" / "toyshop"
    out, ckpt = tmp_path / "params.pt", tmp_path / "best.pt"
    argv = ["--data", str(data), "--device", "cpu", "--epochs", "2", "--meta-batch", "256",
            "--inner-steps", "1", "--meta-sgd", "tensor", "--patience", "1", "--seed", "3",
            "--save-params", str(out), "--out", str(ckpt)]
    assert main(argv) == 0
    model, train, val = load_problem(data, k=5, query=10, seed=3)
    config = MetaConfig(inner_steps=1, meta_batch=256, epochs=2, meta_sgd="tensor")
    expected = meta_train(model, train, val, config, seed=3, progress=False, patience=1)
    got = torch.load(out)
    assert set(got) == set(expected.params)
    for name, value in expected.params.items():
        assert torch.equal(got[name], value), name
    saved = load_checkpoint(ckpt, model=model, expected_config=config)
    assert saved.extra["epoch"] == expected.best_epoch
    for name, value in expected.inner_lrs.items():
        assert torch.equal(saved.inner_lrs[name], value), name
    assert main(["--sizes", "tiny", "--meta-sgd", "tensor"]) == 2  # needs --data
