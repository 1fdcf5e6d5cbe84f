"""MAML's adaptation core: its settings, the inner loop, the meta-loss and adapted predictions.

One user is one task. For a task, the *inner loop* (:func:`adapt`) starts from the shared
initial parameters ``theta`` and takes a few gradient steps on the user's support ratings,
giving adapted parameters ``phi(theta)``. The *meta-loss* is the query error of ``phi``,
averaged over a meta-batch of users; meta-training (:mod:`toyrec_helpers.meta`) moves
``theta`` along its gradient.

The gradient of the meta-loss goes *through* the inner loop: ``phi`` depends on ``theta``
both directly (``phi = theta - lr * g``) and through the inner gradients ``g(theta)``.
Second-order MAML keeps both paths; first-order MAML (FOMAML) treats each ``g`` as a
constant and keeps only the direct path. Code that detaches ``phi`` from ``theta``
altogether, or rebuilds the model from copied weights before the inner loop, silently
trains something else; the tests check the second-order gradient against finite
differences.

:func:`inner_loop` is the one inner-loop core: the dense :func:`adapt` here and the sparse
adaptation of :mod:`toyrec_helpers.accel` both call it with their own support loss. Two
implementations of the meta-loss are given: :func:`meta_loss` adapts all tasks at once
with ``torch.func`` (``functional_call`` + ``grad`` + ``vmap``), and
:func:`meta_loss_reference` is a plain Python loop over tasks with
``torch.autograd.grad``, every step visible. They compute the same number and the same
gradients. Every name here is also importable from :mod:`toyrec_helpers.meta`.

Introduced in chapter 4 (book/04_maml_inner_loop.ipynb).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from toyrec_helpers.checks import check_choice, check_int, check_number, check_params
from toyrec_helpers.episodes import EpisodeBatch, check_batch, resolve_items
from toyrec_helpers.models import masked_mse, parameter_names

__all__ = [
    "MetaConfig", "adapt", "batch_fields", "init_inner_lrs", "inner_loop", "inner_rates",
    "meta_loss", "meta_loss_reference", "predict_adapted", "target_items"
]

Params = dict[str, torch.Tensor]

_ADAPT = ("all", "head", "last")
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
    adapt : {"all", "head", "last"}
        Which parameters the inner loop changes: all of them, only the decision layers
        (MeLU's local layers), or only the final linear layer (ANIL); see
        :func:`toyrec_helpers.models.parameter_names`. The others are shared by all
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
            check_int(getattr(self, name), f"MetaConfig.{name}", minimum)
        for name, positive in (("inner_lr", True), ("outer_lr", True),
                               ("weight_decay", False)):
            check_number(getattr(self, name), f"MetaConfig.{name}", positive=positive)
        for name, allowed in (("adapt", _ADAPT), ("order", _ORDER), ("meta_sgd", _META_SGD)):
            check_choice(getattr(self, name), f"MetaConfig.{name}", allowed)
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
        tensors do not require grad; :func:`toyrec_helpers.meta.meta_train` makes them
        trainable.

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


def inner_rates(
    names: list[str],
    params: Mapping[str, torch.Tensor],
    config: MetaConfig,
    inner_lrs: Mapping[str, torch.Tensor] | None,
) -> Mapping[str, torch.Tensor | float]:
    """Inner learning rate of each adapted parameter, checked against ``config``.

    Parameters
    ----------
    names : list of str
        The adapted parameters (``parameter_names(model, config.adapt)``).
    params : dict of str to torch.Tensor
        The parameters (their shapes bound the shapes of learned rates).
    config : MetaConfig
        ``config.meta_sgd == "off"``: every rate is ``config.inner_lr``; otherwise the
        learned ``inner_lrs`` are required, one entry per adapted parameter, of shape
        ``()`` or the parameter's shape.
    inner_lrs : dict of str to torch.Tensor, optional
        Learned rates (Meta-SGD).

    Returns
    -------
    dict of str to float or torch.Tensor

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """
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
    check_params(model, params)
    names = parameter_names(model, config.adapt)
    rates = inner_rates(names, params, config, inner_lrs)
    fast = {n: params[n] for n in names}
    frozen = {n: p for n, p in params.items() if n not in fast}

    def support_loss(fast: Params, frozen: Params) -> torch.Tensor:
        pred = functional_call(model, {**frozen, **fast}, (users, support_items))
        return masked_mse(pred, support_ratings, support_mask)

    fast = inner_loop(support_loss, fast, frozen, rates, config.inner_steps, config.order)
    return {n: fast.get(n, p) for n, p in params.items()}


def inner_loop(
    support_loss: Callable[[Params, Params], torch.Tensor],
    fast: Mapping[str, torch.Tensor],
    frozen: Mapping[str, torch.Tensor],
    rates: Mapping[str, torch.Tensor | float],
    steps: int,
    order: str = "second",
    engine: str = "func",
) -> Params:
    """The inner-loop core: ``steps`` plain gradient steps ``fast <- fast - rate * grad``.

    Both the dense inner loop (:func:`adapt`) and the sparse one
    (:mod:`toyrec_helpers.accel`) are this function with their own ``support_loss``.

    Parameters
    ----------
    support_loss : callable
        ``support_loss(fast, frozen) -> scalar``, differentiated with respect to ``fast``.
    fast : dict of str to torch.Tensor
        The tensors adapted (their starting values).
    frozen : dict of str to torch.Tensor
        Everything else ``support_loss`` reads (not adapted).
    rates : dict of str to float or torch.Tensor
        Learning rate of each entry of ``fast`` (broadcast against it).
    steps : int
        Number of steps (0 returns ``fast`` unchanged).
    order : {"second", "first"}
        ``"second"``: the result stays a differentiable function of the starting values,
        through the inner gradients. ``"first"``: each gradient is taken at detached
        copies and is a constant (FOMAML).
    engine : {"func", "autograd"}
        ``"func"``: ``torch.func.grad``, pure, works under ``vmap``. ``"autograd"``:
        ``torch.autograd.grad`` (``create_graph`` for second order), unbatched only, with
        less overhead per step; the same values.

    Returns
    -------
    dict of str to torch.Tensor
        The adapted ``fast``, same keys and order.

    Introduced in chapter 4 (book/04_maml_inner_loop.ipynb).
    """
    if order not in _ORDER:
        raise ValueError(f"argument 'order': expected one of {_ORDER}, got {order!r}")
    if engine not in ("func", "autograd"):
        raise ValueError(f"argument 'engine': expected 'func' or 'autograd', got {engine!r}")
    second = order == "second"
    inner_grad = torch.func.grad(support_loss)  # gradient w.r.t. `fast` only
    fast = dict(fast)
    for _ in range(steps):
        if engine == "func":
            if second:
                grads = inner_grad(fast, frozen)
            else:  # first order: the gradient is a constant for the outer loop
                grads = inner_grad(_detached(fast), _detached(frozen))
        else:
            with torch.enable_grad():
                if second:  # keep the graph to the starting values where there is one
                    fast = {n: p if p.requires_grad else p.detach().requires_grad_()
                            for n, p in fast.items()}
                    current, loss = fast, support_loss(fast, frozen)
                else:
                    current = {n: p.detach().requires_grad_() for n, p in fast.items()}
                    loss = support_loss(current, _detached(frozen))
                values = torch.autograd.grad(loss, list(current.values()), create_graph=second)
            grads = dict(zip(current, values, strict=True))
        fast = {n: fast[n] - rates[n] * grads[n] for n in fast}
    return fast


def _detached(params: Mapping[str, torch.Tensor]) -> Params:
    return {n: p.detach() for n, p in params.items()}


def target_items(
    model: nn.Module, batch: EpisodeBatch, items: torch.Tensor | str | None
) -> tuple[torch.Tensor, bool]:
    """The items each task's adapted model scores, checked by
    :func:`toyrec_helpers.episodes.resolve_items` against ``model.n_items``.

    Returns ``(targets, shared)``: ``shared`` is ``True`` when every task scores the same
    items (``items="all"`` or a 1-D tensor); ``targets`` is then ``[M]``, else ``[T, M]``.
    A model without ``n_items`` cannot take ``"all"``, and its indices are only checked to
    be ``>= 0``.

    Introduced in chapter 4 (book/04_maml_inner_loop.ipynb).
    """
    n_items = getattr(model, "n_items", None)
    if n_items is None and isinstance(items, str) and items == "all":
        raise ValueError(f"items='all' needs model.n_items; {type(model).__name__} has none")
    targets = resolve_items(batch, items, torch.iinfo(torch.int64).max if n_items is None
                            else n_items)
    shared = items is not None and targets.stride(0) == 0  # a 1-D tensor or "all", expanded
    return (targets[0], True) if shared else (targets, False)


def batch_fields(batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
    """The tensors of a meta-batch in the order the per-task functions take them.

    ``(users, support_items, support_ratings, support_mask, query_items, query_ratings,
    query_mask)``, each with the task dimension first; ``TypeError`` if ``batch`` is not
    an :class:`~toyrec_helpers.episodes.EpisodeBatch`.

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """
    batch = check_batch(batch)
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
    check_params(model, params)

    def task_loss(user, s_items, s_ratings, s_mask, q_items, q_ratings, q_mask):
        adapted = adapt(model, params, user, s_items, s_ratings, s_mask, config, inner_lrs)
        pred = functional_call(model, adapted, (user, q_items))
        return masked_mse(pred, q_ratings, q_mask)

    return vmap(task_loss)(*batch_fields(batch)).mean()


def meta_loss_reference(
    model: nn.Module, params: Mapping[str, torch.Tensor], batch: EpisodeBatch, config: MetaConfig,
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
    check_params(model, params)
    names = parameter_names(model, config.adapt)
    rates = inner_rates(names, params, config, inner_lrs)
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
    check_params(model, params)
    fields = batch_fields(batch)[:4]
    params = _detached(params)
    inner_lrs = None if inner_lrs is None else _detached(inner_lrs)
    targets, shared = target_items(model, batch, items)
    target_dim = None if shared else 0

    def task_predictions(user, s_items, s_ratings, s_mask, task_items):
        adapted = adapt(model, params, user, s_items, s_ratings, s_mask, config, inner_lrs)
        return functional_call(model, adapted, (user, task_items))

    predict = vmap(task_predictions, in_dims=(0, 0, 0, 0, target_dim), chunk_size=chunk_size)
    return predict(*fields, targets).detach()
