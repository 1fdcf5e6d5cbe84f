"""Tests for toyrec_helpers.distributed: sharding, and one data-parallel meta-step with
two processes (gloo over loopback) equal to the single-process meta-step."""

from __future__ import annotations

import pytest
import torch

from toyrec_helpers.bench import make_problem
from toyrec_helpers.distributed import (
    distributed_meta_step,
    make_meta_optimizer,
    run_local,
    shard,
)
from toyrec_helpers.meta import MetaConfig, meta_loss


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
