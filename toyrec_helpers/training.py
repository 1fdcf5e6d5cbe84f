"""Ordinary supervised training of a rating model: minibatch Adam on the squared error.

This is how the non-meta-learned baselines are fitted (the "global" feature model and the
id-embedding model of the article recipe), and it can also pretrain a model before
meta-training. The model object is not changed: training works on a dictionary of
parameters with ``torch.func.functional_call``, and the result holds detached copies.

Introduced in chapter 3 (book/03_base_recommender.ipynb).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from toyrec_helpers.checks import check_int, check_number

__all__ = ["BestEpoch", "SupervisedResult", "evaluate_mse", "make_optimizer", "train_supervised"]

Params = dict[str, torch.Tensor]
State = TypeVar("State")
ArrayLike = torch.Tensor | np.ndarray | Sequence[float]
Triple = tuple[ArrayLike, ArrayLike, ArrayLike]


@dataclass
class SupervisedResult:
    """What :func:`train_supervised` returns.

    Attributes
    ----------
    params : dict of str to torch.Tensor
        Trained parameters (detached clones; the epoch with the lowest validation MSE when
        validation data was given, else the last epoch). Load them with
        ``model.load_state_dict(result.params)`` or use them with
        ``torch.func.functional_call``.
    history : list of dict
        One row per epoch; row 0 describes the initial parameters. Keys: ``epoch``,
        ``train_mse`` (mean squared error over the epoch's minibatches, weighted by batch
        size, measured while training; NaN for row 0), ``val_mse`` (MSE over all
        validation ratings after the epoch; NaN without validation data) and ``seconds``
        (wall time since the start).
    best_epoch : int
        Epoch whose parameters were kept (0 = initial parameters).
    best_val_mse : float
        Its validation MSE (NaN without validation data).
    stopped_early : bool
        Whether ``patience`` ended training before ``epochs``.
    wall_time_s : float
        Total wall time in seconds.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """

    params: Params
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_mse: float = math.nan
    stopped_early: bool = False
    wall_time_s: float = 0.0


class BestEpoch(Generic[State]):
    """Keep the state of the best epoch and decide when to stop early.

    One rule serves supervised training and meta-training: an epoch is kept when its
    validation value is strictly lower than the best so far (ties keep the earlier epoch);
    epoch 0 is the starting state. Without validation (``validated=False``) every epoch
    is kept, so the last one wins, and training never stops early. With ``patience``,
    training stops after that many epochs in a row without a kept epoch.

    Parameters
    ----------
    value : float
        Validation value of epoch 0 (NaN without validation).
    state : State
        The state of epoch 0 (e.g. a copy of the initial parameters).
    validated : bool
        Whether ``value`` and later values are real validation measurements.
    patience : int, optional
        Epochs without improvement before stopping; ``None`` = never stop early.

    Attributes
    ----------
    best_epoch : int
        The kept epoch.
    best_value : float
        Its validation value.
    state : State
        Its state.
    stopped_early : bool
        Whether :meth:`update` asked to stop.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """

    def __init__(self, value: float, state: State, *, validated: bool = True,
                 patience: int | None = None) -> None:
        if patience is not None:
            check_int(patience, "argument 'patience'", 1)
        self.best_epoch, self.best_value, self.state = 0, value, state
        self.validated, self.patience = validated, patience
        self.stale, self.stopped_early = 0, False

    def update(self, epoch: int, value: float, state: Callable[[], State]) -> bool:
        """Record an epoch; return ``True`` when training should stop.

        Parameters
        ----------
        epoch : int
            The epoch just finished.
        value : float
            Its validation value.
        state : callable
            Returns the epoch's state; called only when the epoch is kept.

        Returns
        -------
        bool
            Whether to stop (patience exhausted).
        """
        if not self.validated or value < self.best_value:
            self.best_epoch, self.best_value, self.state = epoch, value, state()
            self.stale = 0
            return False
        self.stale += 1
        self.stopped_early = self.patience is not None and self.stale >= self.patience
        return self.stopped_early


def make_optimizer(
    params: Mapping[str, torch.Tensor],
    lr: float,
    weight_decay: float = 0.0,
    undecayed: Mapping[str, torch.Tensor] | None = None,
) -> torch.optim.Adam:
    """The Adam optimizer of every training loop of the package.

    Parameters
    ----------
    params : dict of str to torch.Tensor
        Parameters to train (leaf tensors that require grad), with ``weight_decay``.
    lr : float
        Learning rate.
    weight_decay : float
        Adam weight decay (L2 penalty as in ``torch.optim.Adam``) of ``params``.
    undecayed : dict of str to torch.Tensor, optional
        More trainable tensors, in a second group without weight decay (the learned inner
        learning rates of Meta-SGD).

    Returns
    -------
    torch.optim.Adam

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    groups: list[dict[str, object]] = [
        {"params": list(params.values()), "weight_decay": weight_decay}
    ]
    if undecayed is not None:
        groups.append({"params": list(undecayed.values()), "weight_decay": 0.0})
    return torch.optim.Adam(groups, lr=lr)


def _as_triple(
    users: ArrayLike, items: ArrayLike, ratings: ArrayLike, where: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three equal-length 1-D tensors (int64, int64, float32), or a clear error."""
    u, i, r = (x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))
               for x in (users, items, ratings))
    for name, t in (("users", u), ("items", i), ("ratings", r)):
        if t.dim() != 1:
            raise ValueError(f"{where} {name!r}: expected a 1-D array, got shape {tuple(t.shape)}")
    if not len(u) == len(i) == len(r):
        raise ValueError(f"{where}: users, items and ratings must have equal lengths, got "
                         f"{len(u)}, {len(i)} and {len(r)}")
    if len(r) == 0:
        raise ValueError(f"{where}: no ratings")
    for name, t in (("users", u), ("items", i)):
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"{where} {name!r}: expected integer indices, got {t.dtype}")
    r = r.to(torch.float32)
    if not torch.isfinite(r).all():
        raise ValueError(f"{where} 'ratings': non-finite value at position "
                         f"{int(torch.nonzero(~torch.isfinite(r))[0])}")
    return u.to(torch.int64), i.to(torch.int64), r


@torch.no_grad()
def evaluate_mse(
    model: nn.Module,
    params: Params,
    users: ArrayLike,
    items: ArrayLike,
    ratings: ArrayLike,
    batch_size: int = 8192,
) -> float:
    """Mean squared error of ``model`` with ``params`` over the given ratings.

    Parameters
    ----------
    model : torch.nn.Module
        A model called as ``model(users, items)``.
    params : dict of str to torch.Tensor
        Its parameters (used with ``torch.func.functional_call``).
    users, items, ratings : array-like
        1-D arrays of equal length.
    batch_size : int
        Ratings scored at once.

    Returns
    -------
    float
        The MSE pooled over all ratings.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    u, i, r = _as_triple(users, items, ratings, "evaluate_mse:")
    total = 0.0
    for lo in range(0, len(r), batch_size):
        pred = functional_call(model, params, (u[lo:lo + batch_size], i[lo:lo + batch_size]))
        total += float(((pred - r[lo:lo + batch_size]) ** 2).sum())
    return total / len(r)


def train_supervised(
    model: nn.Module,
    users: ArrayLike,
    items: ArrayLike,
    ratings: ArrayLike,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    seed: int = 0,
    val: Triple | None = None,
    patience: int | None = None,
    progress: bool = False,
) -> SupervisedResult:
    """Fit ``model`` to ratings by minibatch Adam on the mean squared error.

    Each epoch shuffles the ratings with a ``torch.Generator`` seeded by ``seed`` and
    takes one Adam step per minibatch on ``mean((model(users, items) - ratings) ** 2)``.
    Training starts from the model's current parameters; the model itself is not changed
    (the parameters are copied and trained with ``torch.func.functional_call``). With the
    same model initialisation and seed the result is the same.

    With validation data, the validation MSE is measured before training and after every
    epoch, and the parameters of the best epoch are returned (epoch 0 = the initial
    parameters).

    Parameters
    ----------
    model : torch.nn.Module
        A rating model called as ``model(users, items)`` (for example
        :class:`toyrec_helpers.models.FeatureRecommender`).
    users, items : array-like of int
        1-D user and item indices of the training ratings.
    ratings : array-like of float
        The training ratings, same length.
    epochs : int
        Passes over the training ratings (>= 1).
    lr : float
        Adam learning rate.
    batch_size : int
        Ratings per minibatch (the last one of an epoch may be smaller).
    weight_decay : float
        Adam weight decay (L2 penalty as in ``torch.optim.Adam``). Note that it also
        shrinks embedding rows that receive no rating gradient.
    seed : int
        Seed of the shuffling order.
    val : tuple (users, items, ratings), optional
        Validation ratings for model selection and early stopping.
    patience : int, optional
        With ``val``: stop after this many epochs without a lower validation MSE.
    progress : bool
        Show a ``tqdm`` progress bar over epochs.

    Returns
    -------
    SupervisedResult

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        check_int(value, f"argument {name!r}", 1)
    check_number(lr, "argument 'lr'")
    check_number(weight_decay, "argument 'weight_decay'", positive=False)
    if patience is not None:
        check_int(patience, "argument 'patience'", 1)
        if val is None:
            raise ValueError("argument 'patience' needs validation data: pass val=(users, "
                             "items, ratings)")
    u, i, r = _as_triple(users, items, ratings, "train_supervised:")
    val_data = None
    if val is not None:
        if len(val) != 3:
            raise ValueError("argument 'val': expected a tuple (users, items, ratings)")
        val_data = _as_triple(*val, "train_supervised: argument 'val'")

    start = time.perf_counter()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    optimizer = make_optimizer(params, lr, weight_decay)
    generator = torch.Generator().manual_seed(int(seed))

    def snapshot() -> Params:
        return {n: p.detach().clone() for n, p in params.items()}

    def val_mse() -> float:
        return math.nan if val_data is None else evaluate_mse(model, params, *val_data)

    best = BestEpoch(val_mse(), snapshot(), validated=val_data is not None, patience=patience)
    history = [{"epoch": 0, "train_mse": math.nan, "val_mse": best.best_value,
                "seconds": time.perf_counter() - start}]
    bar = tqdm(range(1, epochs + 1), desc="train", disable=not progress)
    for epoch in bar:
        order = torch.randperm(len(r), generator=generator)
        total = 0.0
        for lo in range(0, len(r), batch_size):
            idx = order[lo:lo + batch_size]
            pred = functional_call(model, params, (u[idx], i[idx]))
            loss = ((pred - r[idx]) ** 2).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {float(loss)} at epoch {epoch}; "
                                         "lower 'lr'")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        epoch_val = val_mse()
        history.append({"epoch": epoch, "train_mse": total / len(r), "val_mse": epoch_val,
                        "seconds": time.perf_counter() - start})
        bar.set_postfix(train=f"{total / len(r):.4f}", val=f"{epoch_val:.4f}")
        if best.update(epoch, epoch_val, snapshot):
            break
    bar.close()
    return SupervisedResult(
        params=best.state,
        history=history,
        best_epoch=best.best_epoch,
        best_val_mse=best.best_value,
        stopped_early=best.stopped_early,
        wall_time_s=time.perf_counter() - start,
    )
