"""The hybrid model's methods (:mod:`toyrec_helpers.hybrid`), each one registry entry.

Names end in ``_hybrid`` and mirror the feature model's methods, with the same settings
and the same tuning rule (the inner rate tuned on the protocol's grid on the
meta-validation shoppers, from the pretrained parameters):

* ``global_hybrid``: :func:`~toyrec_helpers.hybrid.fit_hybrid`, no adaptation (the mean
  shopper part);
* ``finetune_hybrid``: SGD steps on every parameter from the pretrained ones;
* ``foldin_hybrid``: SGD steps on the shopper part only (matrix-factorisation fold-in);
* ``fomaml_hybrid``, ``maml_hybrid``, ``metasgd_hybrid``: meta-learned, adapting every
  parameter;
* ``maml_foldin_hybrid``: meta-learned, adapting the shopper part only (fold-in made meta;
  ``adapt="head"``, the hybrid's "head" being its shopper part).

And the closed-form statistician's answer that every table needs, ``shrunk_offset``
(:class:`ShrunkOffsetRecommender`): the shrunk item mean of ``popularity`` plus the
shopper's mean deviation from it on their K support ratings, shrunk toward 0,
:math:`\\hat r_{ui} = p_i + \\sum_{j \\in S}(r_{uj} - p_j) / (K + \\kappa)`, with
:math:`\\kappa` chosen on the meta-validation shoppers from :data:`KAPPA_GRID` (an edge
choice is flagged in ``fits``' ``lr_edge`` column like a tuned rate).

The pretrained model (:func:`hybrid_fit`: the item identity a residual over the shrunk
item mean, the pretraining epoch and whether the feature model sees the shopper features
both chosen on the meta-validation shoppers) and the tuned rates are computed once per
seed and shared by these methods, as :class:`~toyrec_helpers.evaluate.methods.SeedContext`
does for the feature model.

Introduced in chapter 7 (book/07_real_ratings.ipynb).
"""

from __future__ import annotations

import warnings
import weakref

import torch

from toyrec_helpers.baselines import (
    AdaptedModelRecommender,
    FittedBaseline,
    PopularityRecommender,
    Recommender,
)
from toyrec_helpers.episodes import EpisodeBatch, resolve_items
from toyrec_helpers.evaluate.builtin import meta_learned
from toyrec_helpers.evaluate.methods import (
    FitFunction,
    MethodFit,
    MethodSpec,
    SeedContext,
    register_method,
)
from toyrec_helpers.hybrid import fit_hybrid

__all__ = ["HYBRID_METHODS", "KAPPA_GRID", "PRETRAIN_EPOCHS", "PRETRAIN_PATIENCE",
           "ShrunkOffsetRecommender", "hybrid_fit", "hybrid_inner_lr"]

KAPPA_GRID: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
"""Shrinkage values tried for ``shrunk_offset`` (0 = the plain mean deviation)."""


class ShrunkOffsetRecommender:
    """Item mean plus the shopper's shrunk mean offset on the support ratings.

    Parameters
    ----------
    popularity : PopularityRecommender
        The item means :math:`p_i` (``by="mean"``).
    kappa : float
        Shrinkage of the offset toward 0.
    name : str

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """

    predicts_ratings = True

    def __init__(self, popularity: PopularityRecommender, kappa: float,
                 name: str = "shrunk_offset") -> None:
        self.popularity, self.kappa, self.name = popularity, float(kappa), name

    def predict(self, batch: EpisodeBatch, items: object = None) -> torch.Tensor:
        """Predicted ratings ``[T, M]`` (see the ``Recommender`` protocol)."""
        scores = self.popularity.scores
        targets = resolve_items(batch, items, len(scores))  # type: ignore[arg-type]
        mask = batch.support_mask.to(scores.dtype)
        residual = (batch.support_ratings - scores[batch.support_items]) * mask
        offset = residual.sum(-1) / (mask.sum(-1) + self.kappa).clamp_min(1e-9)
        return scores[targets] + offset.unsqueeze(-1)

_FITS: weakref.WeakKeyDictionary[SeedContext, FittedBaseline] = weakref.WeakKeyDictionary()
_RATES: weakref.WeakKeyDictionary[SeedContext, dict[str, float]] = weakref.WeakKeyDictionary()


PRETRAIN_EPOCHS: int = 20
"""Most pretraining epochs of :func:`hybrid_fit` (the best meta-validation epoch is kept)."""

PRETRAIN_PATIENCE: int = 3
"""Epochs without a lower meta-validation MSE before :func:`hybrid_fit` stops pretraining."""


def hybrid_fit(ctx: SeedContext) -> FittedBaseline:
    """The pretrained hybrid model of this seed, fitted on first use.

    :func:`~toyrec_helpers.hybrid.fit_hybrid` with the feature model's supervised settings
    (sizes, Adam rate, batch), the item identity learned as a residual over the shrunk
    item mean (``residual=True``), and the epoch chosen on the meta-validation shoppers
    served as new shoppers (at most :data:`PRETRAIN_EPOCHS`, patience
    :data:`PRETRAIN_PATIENCE`). Whether the feature model sees the shopper features is
    chosen the same way: both are fitted and the lower meta-validation MSE wins (the
    choice is in ``model_config["features"]``: no ``user`` columns when they were left
    out).

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    if ctx not in _FITS:
        d, s = ctx.data, ctx.config.supervised
        fits = [fit_hybrid(
            d.user_features, d.item_features, d.train_interactions, d.split.train,
            embedding_dim=s.embedding_dim, hidden=s.hidden, identity_dim=s.embedding_dim,
            epochs=max(s.epochs, PRETRAIN_EPOCHS), lr=s.lr, batch_size=s.batch_size,
            seed=ctx.seed, residual=True, val_users=d.split.val,
            val_interactions=d.dataset.interactions, patience=PRETRAIN_PATIENCE,
            shopper_features=shopper) for shopper in (True, False)]
        _FITS[ctx] = min(fits, key=lambda f: f.training.best_val_mse)
    return _FITS[ctx]


def hybrid_inner_lr(ctx: SeedContext, adapt: str) -> float:
    """The SGD inner rate tuned from the pretrained hybrid, adapting ``adapt``
    (``"all"`` or ``"head"``), by the protocol's one tuning rule.

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    rates = _RATES.setdefault(ctx, {})
    if adapt not in rates:
        g = hybrid_fit(ctx)
        rates[adapt] = ctx.tune(lambda lr: AdaptedModelRecommender(
            g.model, g.params, ctx.config.meta_config(lr, adapt=adapt)),
            _what(adapt), unadapted=g.recommender)
    return rates[adapt]


def _what(adapt: str) -> str:
    return f"hybrid inner learning rate ({adapt})"


def _shrunk_offset(ctx: SeedContext) -> MethodFit:
    d = ctx.data
    pop = PopularityRecommender(d.train_interactions, d.split.train, d.dataset.n_items)
    val = d.val_batch
    errors = []
    for kappa in KAPPA_GRID:
        pred = ShrunkOffsetRecommender(pop, kappa).predict(val)
        m = val.query_mask.to(pred.dtype)
        errors.append(float((((pred - val.query_ratings) ** 2) * m).sum() / m.sum()))
    best = min(range(len(KAPPA_GRID)), key=errors.__getitem__)
    if best == len(KAPPA_GRID) - 1:
        warnings.warn(f"shrunk_offset: the best kappa {KAPPA_GRID[best]} is the grid's "
                      "largest", UserWarning, stacklevel=2)
    return MethodFit(ShrunkOffsetRecommender(pop, KAPPA_GRID[best]), inner_lr=KAPPA_GRID[best],
                     val_mse=errors[best])


def _global(ctx: SeedContext) -> Recommender:
    return hybrid_fit(ctx).recommender


def _adapted(name: str, adapt: str):  # noqa: ANN202 - a fit function
    def fit(ctx: SeedContext) -> MethodFit:
        g, lr = hybrid_fit(ctx), hybrid_inner_lr(ctx, adapt)
        rec = AdaptedModelRecommender(g.model, g.params, ctx.config.meta_config(lr, adapt=adapt),
                                      name=name)
        return MethodFit(rec, inner_lr=lr, tuning=ctx.tunings.get(_what(adapt)))

    return fit


def _meta_learned(name: str, adapt: str, order: str, meta_sgd: str) -> FitFunction:
    return meta_learned(name, adapt, order, meta_sgd, base=hybrid_fit, rate=hybrid_inner_lr,
                        tuning=lambda ctx, a: ctx.tunings.get(_what(a)))


_ENTRIES = (
    MethodSpec("shrunk_offset", _shrunk_offset, seed_free=True,
               description="item mean plus the shopper's shrunk mean offset (closed form)"),
    MethodSpec("global_hybrid", _global,
               default=False,
               description="hybrid model (features + shrunk item identity), no adaptation"),
    MethodSpec("finetune_hybrid", _adapted("finetune_hybrid", "all"),
               default=False,
               description="hybrid model plus SGD steps on every parameter"),
    MethodSpec("foldin_hybrid", _adapted("foldin_hybrid", "head"),
               default=False,
               description="hybrid model plus SGD steps on the shopper part (fold-in)"),
    MethodSpec("fomaml_hybrid", _meta_learned("fomaml_hybrid", "all", "first", "off"),
               default=False,
               description="first-order MAML on the hybrid model"),
    MethodSpec("maml_hybrid", _meta_learned("maml_hybrid", "all", "second", "off"),
               default=False,
               description="MAML on the hybrid model, every parameter adapts"),
    MethodSpec("metasgd_hybrid", _meta_learned("metasgd_hybrid", "all", "second", "tensor"),
               default=False,
               description="Meta-SGD on the hybrid model"),
    MethodSpec("maml_foldin_hybrid",
               _meta_learned("maml_foldin_hybrid", "head", "second", "off"),
               default=False,
               description="MAML on the hybrid model, the shopper part adapts (fold-in made meta)"),
)

HYBRID_METHODS: tuple[str, ...] = tuple(spec.name for spec in _ENTRIES[1:])
"""The hybrid methods, in table order (``shrunk_offset`` is registered before them)."""

for _spec in _ENTRIES:
    register_method(_spec, replace=True)
