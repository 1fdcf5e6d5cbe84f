"""The eleven built-in methods of the protocol, each one fit function and one registry entry.

Registered in table order: ``popularity``, ``popularity_count``, ``global``, ``article``,
``finetune``, ``fomaml``, ``maml``, ``metasgd``, ``maml_local``, ``anil``, ``oracle`` (see
the protocol statement in :mod:`toyrec_helpers.evaluate`).

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from toyrec_helpers.baselines import (
    AdaptedModelRecommender,
    ArticleRecommender,
    FittedBaseline,
    OracleRecommender,
    PopularityRecommender,
    Recommender,
    fit_article,
)
from toyrec_helpers.evaluate.methods import (
    FitFunction,
    MethodFit,
    MethodSpec,
    SeedContext,
    method,
    method_names,
    register_method,
)
from toyrec_helpers.meta import meta_train

__all__ = ["METHODS", "meta_learned"]


@method("popularity", seed_free=True,
        description="the item's mean meta-train rating, shrunk towards the global mean")
def _popularity(ctx: SeedContext) -> Recommender:
    d = ctx.data
    return PopularityRecommender(d.train_interactions, d.split.train, d.dataset.n_items)


@method("popularity_count", predicts_ratings=False, seed_free=True,
        description="the item's number of meta-train ratings (a ranking only)")
def _popularity_count(ctx: SeedContext) -> Recommender:
    d = ctx.data
    return PopularityRecommender(d.train_interactions, d.split.train, d.dataset.n_items,
                                 by="count", name="popularity_count")


@method("global", description="the feature model trained on meta-train ratings, no adaptation")
def _global(ctx: SeedContext) -> Recommender:
    return ctx.global_fit().recommender


@method("article", description="id embeddings, pretraining, per-shopper Adam steps")
def _article(ctx: SeedContext) -> MethodFit:
    d, a = ctx.data, ctx.config.article
    fitted = fit_article(d.train_interactions, d.split.train, d.dataset.n_users,
                         d.dataset.n_items, embedding_dim=a.embedding_dim, epochs=a.epochs,
                         lr=a.lr, batch_size=ctx.config.supervised.batch_size, seed=ctx.seed,
                         finetune_steps=a.steps)

    def with_rate(lr: float) -> ArticleRecommender:
        return ArticleRecommender(fitted.model, fitted.params, steps=a.steps, lr=lr,
                                  name="article")

    unadapted = ArticleRecommender(fitted.model, fitted.params, steps=0, lr=a.lr,
                                   name="article")
    lr = ctx.tune(with_rate, "article Adam rate", unadapted=unadapted)
    return MethodFit(with_rate(lr), inner_lr=lr, tuning=ctx.tunings["article Adam rate"])


@method("finetune", description="the global model plus SGD steps on the support set")
def _finetune(ctx: SeedContext) -> MethodFit:
    g, lr = ctx.global_fit(), ctx.inner_lr("all")
    rec = AdaptedModelRecommender(g.model, g.params, ctx.config.meta_config(lr),
                                  name="finetune")
    return MethodFit(rec, inner_lr=lr, tuning=ctx.inner_tuning("all"))


def meta_learned(
    name: str, adapt: str, order: str, meta_sgd: str, *,
    base: Callable[[SeedContext], FittedBaseline] | None = None,
    rate: Callable[[SeedContext, str], float] | None = None,
    tuning: Callable[[SeedContext, str], Any] | None = None,
) -> FitFunction:
    """The fit function of a meta-learned method: MAML from a fitted model's parameters
    (``base``, default the seed's global model), at the inner rate tuned for ``adapt``
    (``rate``, default :meth:`SeedContext.inner_lr`), on resampled episodes (or the fixed
    ones with ``outer.resample=False``), keeping the best validation epoch. Other models'
    meta-learned methods (chapter 7's hybrid) pass their own ``base``, ``rate`` and
    ``tuning``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    base = base or (lambda ctx: ctx.global_fit())
    rate = rate or (lambda ctx, a: ctx.inner_lr(a))
    tuning = tuning or (lambda ctx, a: ctx.inner_tuning(a))

    def fit(ctx: SeedContext) -> MethodFit:
        d, c = ctx.data, ctx.config
        g, lr = base(ctx), rate(ctx, adapt)
        train = d.train_sampler(ctx.seed) if c.outer.resample else d.train_episodes
        result = meta_train(g.model, train, d.val_episodes,
                            c.meta_config(lr, adapt=adapt, order=order, meta_sgd=meta_sgd),
                            seed=ctx.seed, progress=False, patience=c.outer.patience)
        rec = AdaptedModelRecommender(g.model, result.params, result.config,
                                      inner_lrs=result.inner_lrs, name=name)
        return MethodFit(rec, inner_lr=lr, best_epoch=result.best_epoch,
                         stopped_early=result.stopped_early, tuning=tuning(ctx, adapt),
                         epochs_run=result.epochs_run, val_mse=result.best_val_mse)

    return fit


for _name, _adapt, _order, _meta_sgd, _text in (
    ("fomaml", "all", "first", "off", "first-order MAML"),
    ("maml", "all", "second", "off", "MAML, second order"),
    ("metasgd", "all", "second", "tensor", "Meta-SGD: one learned rate per tensor"),
    ("maml_local", "head", "second", "off",
     "MAML adapting the decision layers only (MeLU's local layers)"),
    ("anil", "last", "second", "off", "MAML adapting the final linear layer only (ANIL)"),
):
    register_method(MethodSpec(_name, meta_learned(_name, _adapt, _order, _meta_sgd),
                               description=_text))


@method("oracle", seed_free=True, needs=("answer_key",),
        description="the ToyShop answer key (generated data only)")
def _oracle(ctx: SeedContext) -> Recommender:
    return OracleRecommender(ctx.data.answer_key)  # fit_method checked that there is one


METHODS: tuple[str, ...] = method_names()
"""The built-in methods, in table order (:func:`method_names` also lists methods
registered later)."""
