"""Data-parallel meta-training: each process adapts a share of the meta-batch's users.

Every process holds the same initial parameters and draws the same meta-batch; process
``r`` of ``W`` takes the ``r``-th contiguous slice of its tasks, computes the meta-loss of
its slice with ``torch.func.vmap`` (:func:`toyrec_helpers.meta.meta_loss`, or the sparse
:func:`toyrec_helpers.accel.sparse_meta_loss`) scaled by its share of the tasks
(``n_r / n``), and differentiates it. One ``all_reduce`` (sum) of the flattened gradients
then gives every process the gradient of the mean meta-loss over the whole meta-batch,
exactly the single-process meta-gradient, and each takes the same Adam step, so the
parameters stay identical everywhere without ever being broadcast again.

Run it with torchrun (backend gloo on CPU, nccl on GPU)::

    python -m torch.distributed.run --nproc_per_node 2 -m toyrec_helpers.distributed \\
        --sizes toyshop --meta-batch 64 --steps 20

or on a data directory (``--data data/toyshop``): then it is
:func:`toyrec_helpers.meta.meta_train` itself with the :class:`AllReduce` hook (validation,
early stopping, Meta-SGD, checkpoint ``--out``), and one process of it gives exactly the
result of ``meta_train``. Without torchrun it runs as a single process.

Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from toyrec_helpers.episodes import Episode, EpisodeBatch
from toyrec_helpers.meta import (
    LossFn,
    MetaConfig,
    make_meta_optimizer,
    meta_loss,
    meta_step,
    meta_train,
)

__all__ = [
    "AllReduce", "distributed_meta_step", "free_port", "load_problem", "main",
    "make_meta_optimizer", "run_local", "shard"
]


def shard(batch: EpisodeBatch, rank: int, world_size: int) -> EpisodeBatch:
    """The ``rank``-th of ``world_size`` contiguous, nearly equal slices of a meta-batch.

    Parameters
    ----------
    batch : EpisodeBatch
        The whole meta-batch.
    rank, world_size : int
        This process and the number of processes.

    Returns
    -------
    EpisodeBatch
        Tasks ``lo:hi`` of ``batch`` (possibly none when there are fewer tasks than
        processes); the slices of all ranks cover every task once.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"expected 0 <= rank < world_size, got rank={rank}, "
                         f"world_size={world_size}")
    n = len(batch)
    lo, hi = n * rank // world_size, n * (rank + 1) // world_size
    return batch.select(slice(lo, hi))


@dataclass(frozen=True)
class AllReduce:
    """The data-parallel hook of :func:`toyrec_helpers.meta.meta_step` and
    :func:`toyrec_helpers.meta.meta_train`: this process takes its :func:`shard` of every
    meta-batch, and the flattened gradients are summed over the process group.

    Attributes
    ----------
    rank, world_size : int
        This process and the number of processes.
    group : optional
        Process group (``None`` = the world).

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """

    rank: int = 0
    world_size: int = 1
    group: Any = None

    @classmethod
    def current(cls, group: Any = None) -> AllReduce:
        """The hook for ``group`` of the initialised process group (a group of one if
        none is initialised)."""
        if not dist.is_initialized():
            return cls(0, 1, group)
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    def local_batch(self, batch: EpisodeBatch) -> EpisodeBatch:
        """This process's share of the meta-batch."""
        return shard(batch, self.rank, self.world_size)

    def all_reduce(self, flat: torch.Tensor) -> None:
        """Sum ``flat`` over the processes, in place."""
        if self.world_size > 1:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)


def distributed_meta_step(
    model: nn.Module, params: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
    batch: EpisodeBatch, config: MetaConfig, inner_lrs: Mapping[str, torch.Tensor] | None = None,
    loss_fn: LossFn = meta_loss, group: Any = None,
) -> float:
    """One data-parallel meta-step: :func:`toyrec_helpers.meta.meta_step` with the
    :class:`AllReduce` hook of ``group``.

    Must be called by every process of the (initialised) process group with the same
    ``batch``, parameters and optimizer state. With one process it is an ordinary
    meta-step.

    Parameters
    ----------
    model, params, optimizer, batch, config, inner_lrs, loss_fn
        As for :func:`toyrec_helpers.meta.meta_step` (``batch`` is the whole meta-batch;
        this process uses its :func:`shard`).
    group : optional
        Process group (default: the world).

    Returns
    -------
    float
        The meta-loss of the whole meta-batch (mean over all its tasks).

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    return float(meta_step(model, params, optimizer, batch, config, inner_lrs,
                           loss_fn=loss_fn, grad_sync=AllReduce.current(group)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a local process group).

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _local_worker(rank: int, world_size: int, port: int, argv: list[str]) -> None:
    """Body of one process of :func:`run_local`: torchrun's environment, then main()."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    torch.set_num_threads(1)
    status = main(argv)
    if status != 0:
        raise SystemExit(status)


def run_local(argv: Sequence[str], nprocs: int = 2) -> None:
    """Run :func:`main` in ``nprocs`` local processes on 127.0.0.1, without torchrun.

    Each process gets torchrun's environment variables (``RANK``, ``WORLD_SIZE``, ...)
    and one intra-op thread; the call returns when all have finished and raises if one
    failed. Handy in a notebook or a test (``--device cpu`` uses gloo over loopback).

    Parameters
    ----------
    argv : sequence of str
        Arguments of :func:`main`.
    nprocs : int
        Number of processes.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    if nprocs < 1:
        raise ValueError(f"argument 'nprocs': expected >= 1, got {nprocs}")
    import torch.multiprocessing as mp

    mp.spawn(_local_worker, args=(nprocs, free_port(), list(argv)), nprocs=nprocs, join=True)


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m toyrec_helpers.distributed`` (run under torchrun).

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    parser = argparse.ArgumentParser(
        prog="python -m torch.distributed.run --nproc_per_node N -m toyrec_helpers.distributed",
        description="Data-parallel MAML meta-training (one process per device).",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--sizes", default="toyshop", choices=("melu", "toyshop", "tiny"),
                        help="synthetic problem (default toyshop)")
    source.add_argument("--data", type=Path, help="meta-train on this data directory")
    parser.add_argument("--steps", type=int, default=10, help="meta-steps (synthetic; default 10)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs (--data; default 1)")
    parser.add_argument("--k", type=int, default=5, help="support size with --data (default 5)")
    parser.add_argument("--query", type=int, default=10, help="query size with --data")
    parser.add_argument("--meta-batch", type=int, default=32, help="tasks per meta-step")
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--inner-lr", type=float, default=0.05)
    parser.add_argument("--outer-lr", type=float, default=1e-3)
    parser.add_argument("--order", choices=("second", "first"), default="second")
    parser.add_argument("--adapt", choices=("all", "head"), default="all")
    parser.add_argument("--meta-sgd", choices=("off", "tensor", "element"), default="off",
                        help="learn the inner learning rates (--data)")
    parser.add_argument("--patience", type=int, default=None,
                        help="stop after this many epochs without a better validation MSE")
    parser.add_argument("--sparse", action="store_true",
                        help="sparse per-task embedding adaptation (accel.sparse_meta_loss)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda (nccl) if available, else cpu (gloo)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="rank 0 saves a checkpoint here (--data)")
    parser.add_argument("--save-params", type=Path,
                        help="rank 0 saves the final parameters here (torch.save)")
    return parser


def _init(device_arg: str) -> tuple[int, int, torch.device, bool]:
    """Initialise the process group from torchrun's environment (or a group of one)."""
    alone = "RANK" not in os.environ  # plain `python -m`: a group of one
    rank, world = (0, 1) if alone else (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but torch.cuda.is_available() is False")
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    created = False
    if not dist.is_initialized():
        init = f"tcp://127.0.0.1:{free_port()}" if alone else "env://"
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method=init,
                                rank=rank, world_size=world)
        created = True
    return rank, world, device, created


def _synthetic_batches(args: argparse.Namespace) -> tuple[nn.Module, list[EpisodeBatch]]:
    from toyrec_helpers.bench import make_problem

    model, batch, _ = make_problem(args.sizes, args.meta_batch * args.steps, args.seed)
    return model, [batch.select(slice(i * args.meta_batch, (i + 1) * args.meta_batch))
                   for i in range(args.steps)]


def load_problem(
    data: str | os.PathLike[str], k: int, query: int, seed: int = 0
) -> tuple[nn.Module, list[Episode], list[Episode]]:
    """The model and the meta-training and meta-validation episodes of ``main --data``.

    Users are split with ``split_users(..., seed)``; features are encoded on the training
    users; the model is a :class:`toyrec_helpers.models.FeatureRecommender` initialised
    after ``torch.manual_seed(seed)``.

    Parameters
    ----------
    data : path
        A data directory (``toyrec_helpers.data.load_dataset``).
    k, query : int
        Support and query ratings per episode.
    seed : int
        Seed of the split, the episodes and the model's initialisation.

    Returns
    -------
    model, train_episodes, val_episodes

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    from toyrec_helpers.data import load_dataset
    from toyrec_helpers.episodes import make_episodes, split_users
    from toyrec_helpers.features import encode_dataset
    from toyrec_helpers.models import FeatureRecommender

    dataset = load_dataset(data)
    split = split_users(len(dataset.users), seed=seed)
    users, items, _, _ = encode_dataset(dataset, fit_users=split.train)
    train, val = (make_episodes(dataset.interactions, part, k, query, seed=seed).episodes
                  for part in (split.train, split.val))
    if not train:
        raise ValueError(f"{data}: no meta-training user has {k} + {query} ratings; lower "
                         "--k or --query")
    torch.manual_seed(seed)
    return FeatureRecommender(users, items), train, val


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m toyrec_helpers.distributed`` (under torchrun).

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    args = build_parser().parse_args(argv)
    for name in ("steps", "epochs", "meta_batch", "k", "query", "patience"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"distributed: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if not args.data and (args.meta_sgd != "off" or args.patience is not None):
        print("distributed: --meta-sgd and --patience need --data", file=sys.stderr)
        return 2
    rank, world, device, created = _init(args.device)
    try:
        config = MetaConfig(inner_steps=args.inner_steps, inner_lr=args.inner_lr,
                            adapt=args.adapt, order=args.order, outer_lr=args.outer_lr,
                            meta_batch=args.meta_batch, epochs=args.epochs,
                            meta_sgd=args.meta_sgd)
        if args.data:
            model, train, val = load_problem(args.data, args.k, args.query, args.seed)
        else:
            model, batches = _synthetic_batches(args)
        dtype = torch.float64 if args.dtype == "float64" else torch.float32
        model = model.to(device=device, dtype=dtype)
        if args.sparse:
            from toyrec_helpers.accel import sparse_meta_loss as loss_fn
        else:
            loss_fn = meta_loss
        hook = AllReduce.current()
        start = time.perf_counter()
        if args.data:
            result = meta_train(model, train, val, config, seed=args.seed, progress=False,
                                checkpoint_path=args.out if rank == 0 else None,
                                patience=args.patience, overwrite=True, loss_fn=loss_fn,
                                grad_sync=hook)
            params, tasks = result.params, len(train) * (len(result.history) - 1)
            if rank == 0:
                for row in result.history:
                    print(f"epoch {row['epoch']}: train meta-loss {row['train_loss']:.4f}, "
                          f"val MSE {row['val_mse']:.4f}", flush=True)
                print(f"kept epoch {result.best_epoch}", flush=True)
        else:
            params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
            optimizer = make_meta_optimizer(params, config)
            for step, batch in enumerate(batches):
                loss = float(meta_step(model, params, optimizer, batch.to(device), config,
                                       loss_fn=loss_fn, grad_sync=hook))
                if rank == 0:
                    print(f"step {step + 1}/{len(batches)}: meta-loss {loss:.4f}", flush=True)
            tasks = sum(len(b) for b in batches)
        seconds = time.perf_counter() - start
        if rank == 0:
            print(f"{world} process(es) on {device}: {tasks} tasks in {seconds:.2f} s "
                  f"({tasks / seconds:.1f} tasks/s)", flush=True)
            if args.save_params is not None:
                torch.save({n: p.detach().cpu() for n, p in params.items()}, args.save_params)
            if args.out is not None and not args.data:  # with --data meta_train saved it
                from toyrec_helpers.checkpoints import save_checkpoint

                save_checkpoint(args.out, params, config, model.model_config,
                                extra={"seed": args.seed, "world_size": world},
                                overwrite=True)
            if args.out is not None:
                print(f"saved {args.out}")
        return 0
    finally:
        if created:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
