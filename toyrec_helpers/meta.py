"""MAML for cold-start recommendation: the inner loop, the meta-loss and meta-training.

One user is one task. For a task, the *inner loop* (:func:`adapt`) starts from the shared
initial parameters ``theta`` and takes a few gradient steps on the user's support ratings,
giving adapted parameters ``phi(theta)``. The *meta-loss* is the query error of ``phi``,
averaged over a meta-batch of users, and the *outer loop* (:func:`meta_train`) moves
``theta`` along the gradient of that meta-loss.

The gradient of the meta-loss goes *through* the inner loop: ``phi`` depends on ``theta``
both directly (``phi = theta - lr * g``) and through the inner gradients ``g(theta)``.
Second-order MAML keeps both paths; first-order MAML (FOMAML) treats each ``g`` as a
constant and keeps only the direct path. Code that detaches ``phi`` from ``theta``
altogether, or rebuilds the model from copied weights before the inner loop, silently
trains something else; the tests of this module check the second-order gradient against
finite differences.

Two implementations of the meta-loss are given: :func:`meta_loss` adapts all tasks at once
with ``torch.func`` (``functional_call`` + ``grad`` + ``vmap``), and
:func:`meta_loss_reference` is a plain Python loop over tasks with
``torch.autograd.grad``. They compute the same number and the same gradients.

Introduced in chapter 4 (book/04_maml_inner_loop.ipynb) and chapter 5
(book/05_maml_outer_loop.ipynb).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from toyrec_helpers.checkpoints import save_checkpoint
from toyrec_helpers.episodes import Episode, EpisodeBatch, collate
from toyrec_helpers.models import masked_mse, parameter_names

__all__ = [
    "MetaConfig",
    "MetaTrainResult",
    "adapt",
    "init_inner_lrs",
    "meta_loss",
    "meta_loss_reference",
    "meta_train",
    "predict_adapted",
]

Params = dict[str, torch.Tensor]

_ADAPT = ("all", "head")
_ORDER = ("second", "first")
_META_SGD = ("off", "tensor", "element")


@dataclass(frozen=True)
class MetaConfig:
    """Settings of MAML (inner loop, outer loop and meta-training).

    Parameters
    ----------
    inner_steps : int
        Gradient steps on the support set per task (0 = no adaptation).
    inner_lr : float
        Inner-loop learning rate (the initial value of the learned rates with Meta-SGD).
    adapt : {"all", "head"}
        Which parameters the inner loop changes: all of them, or only the decision layers
        (see :func:`toyrec_helpers.models.parameter_names`). The others are shared by all
        users and are learned by the outer loop only.
    order : {"second", "first"}
        ``"second"``: exact meta-gradient, through the inner gradients. ``"first"``:
        FOMAML, the inner gradients are treated as constants.
    meta_sgd : {"off", "tensor", "element"}
        Meta-SGD: learn the inner learning rates too, one per parameter tensor or one per
        parameter element. ``False`` and ``True`` are accepted as ``"off"`` and
        ``"element"`` (the original Meta-SGD).
    outer_lr : float
        Adam learning rate of the outer loop.
    meta_batch : int
        Tasks (users) per meta-step.
    epochs : int
        Passes over the meta-training users.
    weight_decay : float
        Adam weight decay of the initial parameters (not of the learned inner rates).
    max_grad_norm : float or None
        Clip the norm of the meta-gradient to this value; ``None`` = no clipping.

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """

    inner_steps: int = 5
    inner_lr: float = 0.05
    adapt: str = "all"
    order: str = "second"
    meta_sgd: str = "off"
    outer_lr: float = 1e-3
    meta_batch: int = 32
    epochs: int = 30
    weight_decay: float = 0.0
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.meta_sgd, bool):
            object.__setattr__(self, "meta_sgd", "element" if self.meta_sgd else "off")
        for name, minimum in (("inner_steps", 0), ("meta_batch", 1), ("epochs", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"MetaConfig.{name}: expected an integer >= {minimum}, "
                                 f"got {value!r}")
        for name, positive in (("inner_lr", True), ("outer_lr", True),
                               ("weight_decay", False)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0 or (positive and value == 0)):
                bound = "> 0" if positive else ">= 0"
                raise ValueError(f"MetaConfig.{name}: expected a finite number {bound}, "
                                 f"got {value!r}")
        for name, allowed in (("adapt", _ADAPT), ("order", _ORDER), ("meta_sgd", _META_SGD)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"MetaConfig.{name}: expected one of {allowed}, "
                                 f"got {getattr(self, name)!r}")
        g = self.max_grad_norm
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float))
                              or not math.isfinite(g) or g <= 0):
            raise ValueError(f"MetaConfig.max_grad_norm: expected None or a finite number "
                             f"> 0, got {g!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dictionary (for checkpoints and JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MetaConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"MetaConfig has no field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))


def init_inner_lrs(
    model: nn.Module, config: MetaConfig, params: Mapping[str, torch.Tensor] | None = None
) -> Params | None:
    """Initial learned inner learning rates for Meta-SGD, all equal to ``config.inner_lr``.

    Parameters
    ----------
    model : torch.nn.Module
        The model (its parameters give names, shapes and dtypes unless ``params`` is given).
    config : MetaConfig
        ``config.meta_sgd`` picks one scalar per adapted tensor (``"tensor"``) or one rate
        per element (``"element"``); with ``"off"`` the result is ``None``.
    params : dict, optional
        Parameters to take shapes and dtypes from instead of the model's.

    Returns
    -------
    dict of str to torch.Tensor, or None
        One entry per adapted parameter (``parameter_names(model, config.adapt)``). The
        tensors do not require grad; :func:`meta_train` makes them trainable.

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """
    if config.meta_sgd == "off":
        return None
    source = dict(model.named_parameters()) if params is None else params
    rates = {}
    for name in parameter_names(model, config.adapt):
        p = source[name]
        shape = () if config.meta_sgd == "tensor" else p.shape
        rates[name] = torch.full(shape, float(config.inner_lr), dtype=p.dtype, device=p.device)
    return rates


def _check_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Raise if ``params`` does not name exactly the model's parameters."""
    expected = set(parameter_names(model, "all"))
    missing, extra = sorted(expected - set(params)), sorted(set(params) - expected)
    if missing or extra:
        raise KeyError(f"argument 'params' must hold exactly the parameters of "
                       f"{type(model).__name__}; missing {missing}, unexpected {extra}")


def _inner_rates(
    names: list[str],
    params: Mapping[str, torch.Tensor],
    config: MetaConfig,
    inner_lrs: Mapping[str, torch.Tensor] | None,
) -> Mapping[str, torch.Tensor | float]:
    """Learning rate of each adapted parameter: ``config.inner_lr`` or the learned ones."""
    if config.meta_sgd == "off":
        if inner_lrs is not None:
            raise ValueError("argument 'inner_lrs' was given but config.meta_sgd is 'off'; "
                             "use MetaConfig(meta_sgd='tensor' or 'element')")
        return dict.fromkeys(names, float(config.inner_lr))
    if inner_lrs is None:
        raise ValueError(f"config.meta_sgd is {config.meta_sgd!r}, so 'inner_lrs' is "
                         "required (start from init_inner_lrs(model, config))")
    if set(inner_lrs) != set(names):
        raise KeyError(f"argument 'inner_lrs' must hold one entry per adapted parameter "
                       f"{sorted(names)}, got {sorted(inner_lrs)}")
    for n in names:
        shape = tuple(inner_lrs[n].shape)
        if shape not in ((), tuple(params[n].shape)):
            raise ValueError(f"inner_lrs[{n!r}] has shape {shape}; expected () or "
                             f"{tuple(params[n].shape)}")
    return inner_lrs


def adapt(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    users: torch.Tensor,
    support_items: torch.Tensor,
    support_ratings: torch.Tensor,
    support_mask: torch.Tensor,
    config: MetaConfig,
    inner_lrs: Mapping[str, torch.Tensor] | None = None,
) -> Params:
    """The inner loop of MAML for one task: a few gradient steps on the support set.

    ``phi <- phi - lr * grad_phi L_support(phi)``, ``config.inner_steps`` times, starting
    from ``phi = params``. Only the parameters in
    ``parameter_names(model, config.adapt)`` change; the others are returned unchanged.
    The function is pure (``torch.func.functional_call`` and ``torch.func.grad``), so it
    can be ``vmap``-ed over tasks and differentiated with respect to ``params``:

    * ``config.order == "second"``: the result is a differentiable function of
      ``params``, inner gradients included (exact MAML).
    * ``config.order == "first"``: each inner gradient is computed at a detached copy and
      is a constant; the result still depends on ``params`` through ``phi = theta - ...``
      (FOMAML), so the meta-gradient is the query gradient at ``phi``.

    Parameters
    ----------
    model : torch.nn.Module
        The model whose ``forward(users, items)`` is called with ``params``.
    params : dict of str to torch.Tensor
        Initial parameters ``theta`` (all of the model's parameters).
    users : torch.Tensor
        int64 scalar: the task's user.
    support_items, support_ratings, support_mask : torch.Tensor
        ``[S]`` item indices, ratings and mask (1.0 = real rating, 0.0 = padding).
    config : MetaConfig
        ``inner_steps``, ``inner_lr``, ``adapt``, ``order`` and ``meta_sgd`` are used.
    inner_lrs : dict of str to torch.Tensor, optional
        Learned learning rates (Meta-SGD; required when ``config.meta_sgd != "off"``).

    Returns
    -------
    dict of str to torch.Tensor
        Adapted parameters ``phi``, same names and order as ``params``.

    Introduced in chapter 4 (book/04_maml_inner_loop.ipynb).
    """
    _check_params(model, params)
    names = parameter_names(model, config.adapt)
    rates = _inner_rates(names, params, config, inner_lrs)
    fast = {n: params[n] for n in names}
    frozen = {n: p for n, p in params.items() if n not in fast}

    def support_loss(fast: Params, frozen: Params) -> torch.Tensor:
        pred = functional_call(model, {**frozen, **fast}, (users, support_items))
        return masked_mse(pred, support_ratings, support_mask)

    inner_grad = torch.func.grad(support_loss)  # gradient w.r.t. `fast` only
    for _ in range(config.inner_steps):
        if config.order == "second":
            grads = inner_grad(fast, frozen)
        else:  # first order: the gradient is a constant for the outer loop
            grads = inner_grad(_detached(fast), _detached(frozen))
        fast = {n: fast[n] - rates[n] * grads[n] for n in names}
    return {n: fast.get(n, p) for n, p in params.items()}


def _detached(params: Mapping[str, torch.Tensor]) -> Params:
    return {n: p.detach() for n, p in params.items()}


def _batch_fields(batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
    if not isinstance(batch, EpisodeBatch):
        raise TypeError(f"argument 'batch': expected EpisodeBatch (see episodes.collate), "
                        f"got {type(batch).__name__}")
    return (batch.users, batch.support_items, batch.support_ratings, batch.support_mask,
            batch.query_items, batch.query_ratings, batch.query_mask)


def meta_loss(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    batch: EpisodeBatch,
    config: MetaConfig,
    inner_lrs: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """MAML meta-loss of a meta-batch, all tasks adapted at once with ``torch.func.vmap``.

    For every task ``t``: adapt on its support set (:func:`adapt`), then take the masked
    query MSE of the adapted parameters. The result is the mean over tasks, a
    differentiable function of ``params`` (and of ``inner_lrs`` with Meta-SGD).

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    params : dict of str to torch.Tensor
        Initial parameters ``theta``, shared by all tasks (not batched).
    batch : EpisodeBatch
        The meta-batch (dimension 0 = task).
    config : MetaConfig
        Inner-loop settings.
    inner_lrs : dict of str to torch.Tensor, optional
        Learned inner learning rates (Meta-SGD).

    Returns
    -------
    torch.Tensor
        Scalar meta-loss.

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """
    _check_params(model, params)

    def task_loss(user, s_items, s_ratings, s_mask, q_items, q_ratings, q_mask):
        adapted = adapt(model, params, user, s_items, s_ratings, s_mask, config, inner_lrs)
        pred = functional_call(model, adapted, (user, q_items))
        return masked_mse(pred, q_ratings, q_mask)

    return vmap(task_loss)(*_batch_fields(batch)).mean()


def meta_loss_reference(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    batch: EpisodeBatch,
    config: MetaConfig,
    inner_lrs: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The same meta-loss as :func:`meta_loss`, written as a plain loop over tasks.

    Slower, but every step is visible. For each user the "fast weights" start as the very
    tensors ``theta`` (not copies, so the graph back to ``theta`` is kept), take
    ``config.inner_steps`` gradient steps with ``torch.autograd.grad(...,
    create_graph=True)`` (second order) or with the gradient taken at a detached copy
    (first order), and the query loss of the result is recorded.

    Parameters
    ----------
    model, params, batch, config, inner_lrs
        As for :func:`meta_loss`. ``params`` must require grad (autograd needs a graph to
        differentiate the support loss), so do not call this under ``torch.no_grad()``.

    Returns
    -------
    torch.Tensor
        Scalar meta-loss, equal to :func:`meta_loss` (gradients included).

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """
    _check_params(model, params)
    names = parameter_names(model, config.adapt)
    rates = _inner_rates(names, params, config, inner_lrs)
    second_order = config.order == "second"
    task_losses = []
    for t in range(len(batch)):
        user = batch.users[t]
        fast = {n: params[n] for n in names}  # phi starts at theta (no copy: same graph)
        for _ in range(config.inner_steps):
            current = {**params, **fast}
            if not second_order:
                # FOMAML: take the gradient at a detached copy, so that it is a constant.
                current = {n: p.detach().requires_grad_(n in fast) for n, p in current.items()}
            pred = functional_call(model, current, (user, batch.support_items[t]))
            loss = masked_mse(pred, batch.support_ratings[t], batch.support_mask[t])
            grads = torch.autograd.grad(
                loss, [current[n] for n in names], create_graph=second_order
            )
            fast = {n: fast[n] - rates[n] * g for n, g in zip(names, grads, strict=True)}
        pred = functional_call(model, {**params, **fast}, (user, batch.query_items[t]))
        task_losses.append(masked_mse(pred, batch.query_ratings[t], batch.query_mask[t]))
    return torch.stack(task_losses).mean()


def predict_adapted(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    batch: EpisodeBatch,
    config: MetaConfig,
    inner_lrs: Mapping[str, torch.Tensor] | None = None,
    items: torch.Tensor | str | None = None,
    chunk_size: int | None = 64,
) -> torch.Tensor:
    """Predictions of each task's adapted model (adapted on its support set).

    The inner loop still takes gradients (``torch.func.grad``), but ``params`` and
    ``inner_lrs`` are detached, so no graph to them is built and the result does not
    require grad.

    Parameters
    ----------
    model, params, batch, config, inner_lrs
        As for :func:`meta_loss`.
    items : None, "all" or torch.Tensor
        ``None``: the query items, result ``[T, Q]``. ``"all"``: every catalogue item
        ``0..model.n_items-1``, result ``[T, n_items]``. A 1-D int64 tensor ``[M]``: the
        same items for every task, result ``[T, M]``; a 2-D ``[T, M]`` tensor: per task.
    chunk_size : int or None
        Tasks adapted at once (bounds memory with ``items="all"``); ``None`` = all.

    Returns
    -------
    torch.Tensor
        Predicted ratings, ``[T, M]``.

    Introduced in chapter 4 (book/04_maml_inner_loop.ipynb).
    """
    _check_params(model, params)
    fields = _batch_fields(batch)[:4]
    params = _detached(params)
    inner_lrs = None if inner_lrs is None else _detached(inner_lrs)
    if items is None:
        targets, target_dim = batch.query_items, 0
    elif isinstance(items, str):
        if items != "all":
            raise ValueError(f"argument 'items': expected None, 'all' or a tensor, got {items!r}")
        n_items = getattr(model, "n_items", None)
        if n_items is None:
            raise ValueError(f"items='all' needs model.n_items; {type(model).__name__} has none")
        targets, target_dim = torch.arange(n_items, device=batch.users.device), None
    else:
        targets = torch.as_tensor(items, device=batch.users.device)
        if targets.dtype != torch.int64 or targets.dim() not in (1, 2):
            raise ValueError(f"argument 'items': expected int64 [M] or [T, M], got "
                             f"{targets.dtype} {tuple(targets.shape)}")
        if targets.dim() == 2 and targets.shape[0] != len(batch):
            raise ValueError(f"argument 'items': {targets.shape[0]} rows for {len(batch)} tasks")
        target_dim = 0 if targets.dim() == 2 else None

    def task_predictions(user, s_items, s_ratings, s_mask, task_items):
        adapted = adapt(model, params, user, s_items, s_ratings, s_mask, config, inner_lrs)
        return functional_call(model, adapted, (user, task_items))

    predict = vmap(task_predictions, in_dims=(0, 0, 0, 0, target_dim), chunk_size=chunk_size)
    return predict(*fields, targets).detach()


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


def meta_train(
    model: nn.Module,
    train_episodes: list[Episode],
    val_episodes: list[Episode],
    config: MetaConfig,
    seed: int = 0,
    progress: bool = True,
    checkpoint_path: str | os.PathLike[str] | None = None,
    patience: int | None = None,
    overwrite: bool = False,
) -> MetaTrainResult:
    """Meta-train the initial parameters of ``model`` with MAML (and optionally Meta-SGD).

    Each epoch shuffles the training users with a seeded ``torch.Generator``, cuts them
    into meta-batches of ``config.meta_batch`` users (the last one may be smaller), and for
    each takes one Adam step on :func:`meta_loss`. After each epoch the validation users
    are adapted on their support sets and scored on their query sets; the parameters of
    the epoch with the lowest validation MSE are returned (epoch 0 = the model's initial
    parameters, so meta-training never returns something worse on validation than it
    started from).

    The model itself is not changed: it provides the architecture, the feature buffers and
    the starting parameters (a pretrained model can be passed).

    Parameters
    ----------
    model : torch.nn.Module
        Model to meta-train (for example :class:`toyrec_helpers.models.FeatureRecommender`).
    train_episodes, val_episodes : list of Episode
        Meta-training and meta-validation tasks (``val_episodes`` may be empty: then no
        validation, no early stopping, and the last epoch's parameters are returned).
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

    Returns
    -------
    MetaTrainResult

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """
    if not isinstance(config, MetaConfig):
        raise TypeError(f"argument 'config': expected MetaConfig, got {type(config).__name__}")
    if len(train_episodes) == 0:
        raise ValueError("argument 'train_episodes' is empty: meta-training needs tasks")
    if patience is not None and (isinstance(patience, bool) or patience < 1):
        raise ValueError(f"argument 'patience': expected None or an integer >= 1, got {patience!r}")
    if checkpoint_path is not None:
        checkpoint_path = os.fspath(checkpoint_path)
        if os.path.exists(checkpoint_path) and not overwrite:
            raise FileExistsError(f"checkpoint_path {checkpoint_path!r} already exists; pass "
                                  "overwrite=True or choose another path")
    model_config = getattr(model, "model_config", {"class": type(model).__name__})

    start = time.perf_counter()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    inner_lrs = init_inner_lrs(model, config, params)
    groups: list[dict[str, Any]] = [
        {"params": list(params.values()), "weight_decay": config.weight_decay}
    ]
    if inner_lrs is not None:
        inner_lrs = {n: r.requires_grad_(True) for n, r in inner_lrs.items()}
        groups.append({"params": list(inner_lrs.values()), "weight_decay": 0.0})
    optimizer = torch.optim.Adam(groups, lr=config.outer_lr)
    trainable = [p for group in groups for p in group["params"]]
    generator = torch.Generator().manual_seed(int(seed))
    device = params[next(iter(params))].device if params else torch.device("cpu")
    val_batch = collate(val_episodes).to(device) if len(val_episodes) else None

    def snapshot(tensors: Params | None) -> Params | None:
        return None if tensors is None else {n: t.detach().clone() for n, t in tensors.items()}

    def save(epoch: int, val_mse: float) -> None:
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path, best_params, config, model_config, inner_lrs=best_lrs,
                extra={"epoch": epoch, "val_mse": val_mse, "seed": int(seed)}, overwrite=True,
            )

    val_mse, val_mae = _val_metrics(model, params, val_batch, config, inner_lrs)
    history = [{"epoch": 0, "train_loss": math.nan, "val_mse": val_mse, "val_mae": val_mae,
                "seconds": time.perf_counter() - start}]
    best_params, best_lrs = snapshot(params), snapshot(inner_lrs)
    best_epoch, best_val = 0, val_mse
    stale, stopped_early = 0, False
    bar = tqdm(range(1, config.epochs + 1), desc="meta-train", disable=not progress)
    # Every training episode goes to the device once; meta-batches are selected there, and
    # the losses stay there until the epoch ends, so the loop never waits for the device.
    all_tasks = collate(train_episodes).to(device)
    for epoch in bar:
        order = torch.randperm(len(train_episodes), generator=generator).to(device)
        step_losses, sizes = [], []
        for lo in range(0, len(order), config.meta_batch):
            batch = all_tasks.select(order[lo:lo + config.meta_batch])
            loss = meta_loss(model, params, batch, config, inner_lrs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            step_losses.append(loss.detach())
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
        if val_batch is None or val_mse < best_val:
            best_params, best_lrs = snapshot(params), snapshot(inner_lrs)
            best_epoch, best_val, stale = epoch, val_mse, 0
            save(epoch, val_mse)
        else:
            stale += 1
            if patience is not None and stale >= patience:
                stopped_early = True
                break
    bar.close()
    if checkpoint_path is not None and best_epoch == 0:
        save(0, best_val)
    return MetaTrainResult(
        params=best_params,
        inner_lrs=best_lrs,
        history=history,
        best_epoch=best_epoch,
        best_val_mse=best_val,
        stopped_early=stopped_early,
        wall_time_s=time.perf_counter() - start,
        config=config,
        seed=int(seed),
    )
