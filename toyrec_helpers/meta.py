"""MAML for cold-start recommendation: meta-training (the outer loop).

One user is one task. The *outer loop* (:func:`meta_train`) moves the shared initial
parameters ``theta`` along the gradient of the *meta-loss*: the query error of each
user's adapted parameters ``phi(theta)``, averaged over a meta-batch of users. The inner
loop, the meta-loss and adapted predictions live in :mod:`toyrec_helpers.adaptation`
(:class:`MetaConfig`, :func:`adapt`, :func:`meta_loss`, :func:`meta_loss_reference`,
:func:`predict_adapted`, ...) and are importable from here too.

Introduced in chapter 4 (book/04_maml_inner_loop.ipynb) and chapter 5
(book/05_maml_outer_loop.ipynb).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from toyrec_helpers.adaptation import (
    MetaConfig,
    adapt,
    batch_fields,
    init_inner_lrs,
    inner_loop,
    inner_rates,
    meta_loss,
    meta_loss_reference,
    predict_adapted,
    target_items,
)
from toyrec_helpers.checkpoints import save_checkpoint
from toyrec_helpers.checks import check_int
from toyrec_helpers.episodes import Episode, EpisodeBatch, collate
from toyrec_helpers.training import BestEpoch, make_optimizer

__all__ = [
    "EpisodeSource", "GradSync", "MetaConfig", "MetaTrainResult", "adapt", "batch_fields",
    "init_inner_lrs",
    "inner_loop", "inner_rates", "make_meta_optimizer", "meta_loss", "meta_loss_reference",
    "meta_step", "meta_train", "predict_adapted", "target_items"
]

Params = dict[str, torch.Tensor]
LossFn = Callable[..., torch.Tensor]


@dataclass
class MetaTrainResult:
    """What :func:`meta_train` returns.

    Attributes
    ----------
    params : dict of str to torch.Tensor
        The meta-learned initial parameters with the best validation MSE (load them with
        ``model.load_state_dict(result.params)``).
    inner_lrs : dict of str to torch.Tensor or None
        Learned inner learning rates (Meta-SGD), from the same epoch.
    history : list of dict
        One row per epoch (row 0 = before training): ``epoch``, ``train_loss`` (mean
        meta-loss over the epoch's meta-batches; NaN for row 0), ``val_mse`` and ``val_mae``
        (mean over validation users of their query error after adaptation; NaN without
        validation users), ``seconds`` (wall time since the start).
    best_epoch : int
        Epoch whose parameters were kept (0 = the initial parameters).
    best_val_mse : float
        Its validation MSE.
    stopped_early : bool
        Whether ``patience`` ended training before ``config.epochs``.
    wall_time_s : float
        Total wall time.
    config : MetaConfig
        The configuration used.
    seed : int
        The seed used.

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """

    params: Params
    inner_lrs: Params | None
    history: list[dict[str, float]]
    best_epoch: int
    best_val_mse: float
    stopped_early: bool
    wall_time_s: float
    config: MetaConfig
    seed: int = 0

    @property
    def epochs_run(self) -> int:
        """Epochs of meta-training that ran (fewer than ``config.epochs`` when stopped
        early)."""
        return int(self.history[-1]["epoch"])


EpisodeSource = list[Episode] | Callable[[int], Sequence[Episode]]
"""Meta-training tasks: a fixed list of episodes (the same every epoch) or a sampler,
``sampler(epoch) -> episodes`` (e.g. :class:`toyrec_helpers.episodes.EpisodeSampler`)."""


def _val_metrics(
    model: nn.Module,
    params: Params,
    batch: EpisodeBatch | None,
    config: MetaConfig,
    inner_lrs: Params | None,
) -> tuple[float, float]:
    """Mean over users of the query MSE and MAE after adaptation."""
    if batch is None:
        return math.nan, math.nan
    pred = predict_adapted(model, params, batch, config, inner_lrs)
    target = batch.query_ratings.to(pred.dtype)
    mask = batch.query_mask.to(pred.dtype)
    denom = mask.sum(-1).clamp_min(1.0)
    mse = ((pred - target) ** 2 * mask).sum(-1) / denom
    mae = ((pred - target).abs() * mask).sum(-1) / denom
    return float(mse.mean()), float(mae.mean())


def _trim_support(batch: EpisodeBatch) -> EpisodeBatch:
    """The batch without the support columns that are padding for every task."""
    width = max(1, int(batch.support_mask.sum(1).max()))
    if width >= batch.support_items.shape[1]:
        return batch
    return EpisodeBatch(users=batch.users, support_items=batch.support_items[:, :width],
                        support_ratings=batch.support_ratings[:, :width],
                        support_mask=batch.support_mask[:, :width],
                        query_items=batch.query_items, query_ratings=batch.query_ratings,
                        query_mask=batch.query_mask)


def make_meta_optimizer(
    params: Mapping[str, torch.Tensor],
    config: MetaConfig,
    inner_lrs: Mapping[str, torch.Tensor] | None = None,
) -> torch.optim.Adam:
    """The Adam optimizer of meta-training (:func:`toyrec_helpers.training.make_optimizer`
    with ``config.outer_lr``; ``config.weight_decay`` applies to ``params``, not to the
    learned inner rates ``inner_lrs``).

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """
    return make_optimizer(params, config.outer_lr, config.weight_decay, undecayed=inner_lrs)


class GradSync(Protocol):
    """Data-parallel hook of :func:`meta_step` (see :mod:`toyrec_helpers.distributed`).

    ``local_batch(batch)`` is this process's share of the meta-batch; ``all_reduce(flat)``
    sums a flat tensor over all processes, in place.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """

    def local_batch(self, batch: EpisodeBatch) -> EpisodeBatch: ...

    def all_reduce(self, flat: torch.Tensor) -> None: ...


def meta_step(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batch: EpisodeBatch,
    config: MetaConfig,
    inner_lrs: Mapping[str, torch.Tensor] | None = None,
    *,
    loss_fn: LossFn = meta_loss,
    grad_sync: GradSync | None = None,
) -> torch.Tensor:
    """One outer step: meta-loss, meta-gradient, optional all-reduce, clipping, optimizer step.

    Without ``grad_sync``: ``loss_fn(...).backward()``. With it (data-parallel), this
    process differentiates the meta-loss of its share ``grad_sync.local_batch(batch)``
    scaled by that share of the tasks, and ``grad_sync.all_reduce`` sums the flattened
    gradients (and the loss) over the processes: every process gets the gradient of the
    mean meta-loss over the whole meta-batch and takes the same step. Then the gradient is
    clipped to ``config.max_grad_norm`` (if set) and ``optimizer.step()`` runs. Nothing
    waits for the device.

    Parameters
    ----------
    model : torch.nn.Module
        The model (architecture and feature buffers).
    params : dict of str to torch.Tensor
        Initial parameters ``theta`` (leaf tensors that require grad), updated in place.
    optimizer : torch.optim.Optimizer
        Optimizer over ``params`` (and ``inner_lrs``), e.g. :func:`make_meta_optimizer`.
    batch : EpisodeBatch
        The whole meta-batch.
    config : MetaConfig
        Inner-loop settings and ``max_grad_norm``.
    inner_lrs : dict of str to torch.Tensor, optional
        Learned inner learning rates (Meta-SGD), updated in place.
    loss_fn : callable
        ``loss_fn(model, params, batch, config, inner_lrs)``: :func:`meta_loss` (default),
        :func:`meta_loss_reference` or ``accel.sparse_meta_loss``.
    grad_sync : GradSync, optional
        Data-parallel hook (``distributed.AllReduce``).

    Returns
    -------
    torch.Tensor
        The meta-loss of the whole meta-batch (detached scalar, still on the device).

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """
    trainable = list(params.values()) + (list(inner_lrs.values()) if inner_lrs else [])
    if not trainable:
        raise ValueError("argument 'params' is empty")
    optimizer.zero_grad(set_to_none=True)
    if grad_sync is None:
        loss = loss_fn(model, params, batch, config, inner_lrs)
        loss.backward()
        loss = loss.detach()
    else:
        ref = trainable[0]
        local = grad_sync.local_batch(batch)
        if len(local):
            part = loss_fn(model, params, local, config, inner_lrs) * (len(local) / len(batch))
            grads = torch.autograd.grad(part, trainable, allow_unused=True)
        else:  # more processes than tasks: this one contributes nothing
            part = torch.zeros((), dtype=ref.dtype, device=ref.device)
            grads = (None,) * len(trainable)
        flat = torch.cat(
            [(torch.zeros_like(p) if g is None else g).reshape(-1).to(ref.dtype)
             for p, g in zip(trainable, grads, strict=True)]
            + [part.detach().reshape(1).to(ref.dtype)]
        )
        grad_sync.all_reduce(flat)
        offset = 0
        for p in trainable:
            p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
        loss = flat[-1]
    if config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
    optimizer.step()
    return loss


def meta_train(
    model: nn.Module,
    train_episodes: EpisodeSource,
    val_episodes: list[Episode],
    config: MetaConfig,
    seed: int = 0,
    progress: bool = True,
    checkpoint_path: str | os.PathLike[str] | None = None,
    patience: int | None = None,
    overwrite: bool = False,
    *,
    loss_fn: LossFn = meta_loss,
    grad_sync: GradSync | None = None,
) -> MetaTrainResult:
    """Meta-train the initial parameters of ``model`` with MAML (and optionally Meta-SGD).

    Each epoch takes the training episodes (a fixed list, or a fresh draw
    ``train_episodes(epoch)`` from a sampler such as
    :class:`~toyrec_helpers.episodes.EpisodeSampler`), shuffles them with a seeded
    ``torch.Generator`` (sampled episodes are then grouped by support size, so that a
    meta-batch holds tasks of similar K and little padding, and the meta-batches are
    taken in random order), cuts them
    into meta-batches of ``config.meta_batch`` users (the last one may be smaller), and for
    each takes one Adam step (:func:`meta_step`) on ``loss_fn``. After each epoch the
    validation users are adapted on their support sets and scored on their query sets; the
    parameters of the epoch with the lowest validation MSE are returned (epoch 0 = the
    model's initial parameters, so meta-training never returns something worse on
    validation than it started from; see :class:`toyrec_helpers.training.BestEpoch`).

    The model itself is not changed: it provides the architecture, the feature buffers and
    the starting parameters (a pretrained model can be passed).

    Parameters
    ----------
    model : torch.nn.Module
        Model to meta-train (for example :class:`toyrec_helpers.models.FeatureRecommender`).
    train_episodes : list of Episode, or callable
        Meta-training tasks: the same list every epoch, or ``train_episodes(epoch)``
        (epochs 1, 2, ...) giving each epoch's episodes.
    val_episodes : list of Episode
        Meta-validation tasks, the same every epoch (may be empty: then no validation, no
        early stopping, and the last epoch's parameters are returned).
    config : MetaConfig
        All settings.
    seed : int
        Seed of the meta-batch order. With the same model initialisation and seed the
        result is the same.
    progress : bool
        Show a ``tqdm`` progress bar over epochs.
    checkpoint_path : path, optional
        Save the best parameters so far here (see
        :func:`toyrec_helpers.checkpoints.save_checkpoint`) whenever they improve. An
        existing file is an error unless ``overwrite=True``.
    patience : int, optional
        Stop after this many epochs without a lower validation MSE; ``None`` = never.
    overwrite : bool
        Allow replacing an existing file at ``checkpoint_path``.
    loss_fn : callable
        The meta-loss, ``loss_fn(model, params, batch, config, inner_lrs)``:
        :func:`meta_loss` (default) or ``accel.sparse_meta_loss`` (chapter 10).
    grad_sync : GradSync, optional
        Data-parallel hook (``distributed.AllReduce``): each process differentiates its
        share of every meta-batch and the gradients are summed (see :func:`meta_step`).

    Returns
    -------
    MetaTrainResult

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """
    if not isinstance(config, MetaConfig):
        raise TypeError(f"argument 'config': expected MetaConfig, got {type(config).__name__}")
    sampled = callable(train_episodes)
    if not sampled and len(train_episodes) == 0:
        raise ValueError("argument 'train_episodes' is empty: meta-training needs tasks")
    if patience is not None:
        check_int(patience, "argument 'patience'", 1)
    if checkpoint_path is not None:
        checkpoint_path = os.fspath(checkpoint_path)
        if os.path.exists(checkpoint_path) and not overwrite:
            raise FileExistsError(f"checkpoint_path {checkpoint_path!r} already exists; pass "
                                  "overwrite=True or choose another path")
    model_config = getattr(model, "model_config", {"class": type(model).__name__})

    start = time.perf_counter()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    inner_lrs = init_inner_lrs(model, config, params)
    if inner_lrs is not None:
        inner_lrs = {n: r.requires_grad_(True) for n, r in inner_lrs.items()}
    optimizer = make_meta_optimizer(params, config, inner_lrs)
    generator = torch.Generator().manual_seed(int(seed))
    device = params[next(iter(params))].device if params else torch.device("cpu")
    val_batch = collate(val_episodes).to(device) if len(val_episodes) else None

    def snapshot() -> tuple[Params, Params | None]:
        return ({n: t.detach().clone() for n, t in params.items()},
                None if inner_lrs is None else {n: t.detach().clone()
                                                for n, t in inner_lrs.items()})

    def save(epoch: int) -> None:
        if checkpoint_path is not None:
            best_params, best_lrs = best.state
            save_checkpoint(
                checkpoint_path, best_params, config, model_config, inner_lrs=best_lrs,
                extra={"epoch": epoch, "val_mse": best.best_value, "seed": int(seed)},
                overwrite=True,
            )

    val_mse, val_mae = _val_metrics(model, params, val_batch, config, inner_lrs)
    history = [{"epoch": 0, "train_loss": math.nan, "val_mse": val_mse, "val_mae": val_mae,
                "seconds": time.perf_counter() - start}]
    best = BestEpoch(val_mse, snapshot(), validated=val_batch is not None, patience=patience)
    bar = tqdm(range(1, config.epochs + 1), desc="meta-train", disable=not progress)
    # Every training episode goes to the device once; meta-batches are selected there, and
    # the losses stay there until the epoch ends, so the loop never waits for the device.
    all_tasks = None if sampled else collate(train_episodes).to(device)
    for epoch in bar:
        if sampled:
            episodes = list(train_episodes(epoch))
            if not episodes:
                raise ValueError(f"the episode sampler gave no episode for epoch {epoch}")
            all_tasks = collate(episodes).to(device)
        order = torch.randperm(len(all_tasks), generator=generator).to(device)
        batches = [order[lo:lo + config.meta_batch]
                   for lo in range(0, len(order), config.meta_batch)]
        if sampled:  # meta-batches of similar support sizes, in random order: less padding
            sizes_k = all_tasks.support_mask.sum(1)[order]
            order = order[torch.sort(sizes_k, stable=True).indices]
            batches = [order[lo:lo + config.meta_batch]
                       for lo in range(0, len(order), config.meta_batch)]
            shuffle = torch.randperm(len(batches), generator=generator).tolist()
            batches = [_trim_support(all_tasks.select(batches[i])) for i in shuffle]
        else:
            batches = [all_tasks.select(index) for index in batches]
        step_losses, sizes = [], []
        for batch in batches:
            step_losses.append(meta_step(model, params, optimizer, batch, config, inner_lrs,
                                         loss_fn=loss_fn, grad_sync=grad_sync))
            sizes.append(len(batch))
        losses = torch.stack(step_losses).cpu()  # the epoch's one wait for the device
        bad = torch.nonzero(~torch.isfinite(losses))
        if len(bad):
            step = int(bad[0])
            raise FloatingPointError(
                f"meta-loss is {losses[step].item()} at epoch {epoch}, meta-step {step}; "
                "lower config.inner_lr or config.outer_lr"
            )
        total = float((losses * torch.tensor(sizes, dtype=losses.dtype)).sum())
        n_tasks = sum(sizes)
        val_mse, val_mae = _val_metrics(model, params, val_batch, config, inner_lrs)
        history.append({"epoch": epoch, "train_loss": total / n_tasks, "val_mse": val_mse,
                        "val_mae": val_mae, "seconds": time.perf_counter() - start})
        bar.set_postfix(train=f"{total / n_tasks:.4f}", val_mse=f"{val_mse:.4f}")
        stop = best.update(epoch, val_mse, snapshot)
        if best.best_epoch == epoch:
            save(epoch)
        if stop:
            break
    bar.close()
    if checkpoint_path is not None and best.best_epoch == 0:
        save(0)
    best_params, best_lrs = best.state
    return MetaTrainResult(
        params=best_params,
        inner_lrs=best_lrs,
        history=history,
        best_epoch=best.best_epoch,
        best_val_mse=best.best_value,
        stopped_early=best.stopped_early,
        wall_time_s=time.perf_counter() - start,
        config=config,
        seed=int(seed),
    )
