"""Registry entries for ranking by what shoppers choose (chapter 8).

Registered in table order after the built-in methods:

* ``itemknn``: "also bought" (:class:`~toyrec_helpers.choice_rankers.ItemKNNRecommender`),
  seed-free.
* ``choice_global``: the choice model trained on meta-train purchases, not adapted.
* ``choice_finetune``: the same, each new shopper's taste vector adapted by
  ``inner.steps`` gradient steps on their K support toys.
* ``choice_fomaml``, ``choice_maml``: first- and second-order MAML from the global choice
  model (episodes resampled in time), adapted likewise.
* ``choice_combined``: ``log P(choose)`` of ``choice_maml`` plus ``log P(r >= 4)`` from
  the ``finetune`` rating model ("will choose and will like").
* ``oracle_choice``: the generator's probability of buying and rating 4 or more (ToyShop
  only), seed-free.

Every choice method is a ranking (``predicts_ratings=False``). Every selection is made
on the meta-validation shoppers by one score, NDCG@10 of episodes shaped like the
protocol's test (:func:`~toyrec_helpers.choice.choice_validation`: first K purchases as
support for every K of the protocol, the purchases after the first ``max(ks)`` as
query): the global model's epoch, and the inner rate of each adapted method by one rule
and one bracketed grid (:data:`~toyrec_helpers.choice.CHOICE_LR_GRID`, 0.001 to 10, so
that "hardly adapt" is a candidate): ``choice_finetune``'s from the global model
(:func:`~toyrec_helpers.choice.tune_choice_lr`), ``choice_fomaml``'s and
``choice_maml``'s by meta-training at every rate of the grid and keeping the best
(:func:`~toyrec_helpers.choice.tune_meta_choice`), as is each epoch of meta-training.
Meta-training uses the protocol's ``outer`` settings (meta-batch, Adam rate, epochs,
patience) on episodes shaped like the test (``episodes="first"``: support = a meta-train
shopper's first K purchases, K drawn from ``train_k_range``, query = purchases after the
first ``max(ks)``).

Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from toyrec_helpers.baselines import AdaptedModelRecommender
from toyrec_helpers.choice import (
    CHOICE_LR_GRID,
    ChoiceRecommender,
    MetaChoiceResult,
    choice_validation,
    dense_features,
    train_choice,
    tune_choice_lr,
    tune_meta_choice,
)
from toyrec_helpers.choice_rankers import (
    CombinedRecommender,
    ItemKNNRecommender,
    OracleChoiceRecommender,
)
from toyrec_helpers.evaluate.methods import MethodFit, SeedContext, method

__all__ = ["CHOICE", "ChoiceSettings", "choice_state", "lr_edge", "oracle_choice_recommender"]


@dataclass(frozen=True)
class ChoiceSettings:
    """Settings of the choice model in the protocol (fixed before any comparison).

    Attributes
    ----------
    dim, epochs, lr, batch_size, taste_penalty, own_lr
        :func:`~toyrec_helpers.choice.train_choice`.
    lr_grid : tuple of float
        Inner rates tried, by every adapted choice method
        (:func:`~toyrec_helpers.choice.tune_choice_lr`,
        :func:`~toyrec_helpers.choice.tune_meta_choice`), extended at an edge by up to the
        protocol's ``inner.lr_extend`` rates per side.
    query : int
        Query purchases per resampled meta-training episode.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """

    dim: int = 16
    epochs: int = 8
    lr: float = 1e-2
    batch_size: int = 512
    taste_penalty: float = 1e-2
    own_lr: float = 1e-2
    lr_grid: tuple[float, ...] = CHOICE_LR_GRID
    query: int = 20


CHOICE = ChoiceSettings()
"""The settings the registered methods use."""

_STATE: weakref.WeakKeyDictionary[SeedContext, dict[str, Any]] = weakref.WeakKeyDictionary()


def choice_state(ctx: SeedContext) -> dict[str, Any]:
    """What the choice methods of one seed share, computed on first use: ``validation``
    (:func:`~toyrec_helpers.choice.choice_validation`), ``model`` and ``params`` (the
    global choice model), ``inner_lr`` and ``tuning`` (``choice_finetune``'s rate), and
    the meta-trained results by order (``"maml_second"``, ``"maml_first"``: each a tuple
    of its tuned rate, :class:`~toyrec_helpers.choice.MetaChoiceResult` and tuning table).

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    state = _STATE.setdefault(ctx, {})
    if "model" not in state:
        d = ctx.data
        torch.manual_seed(ctx.seed)
        validation = choice_validation(d)
        model, params = train_choice(
            dense_features(d.item_features), dense_features(d.user_features),
            d.dataset.interactions, d.split.train, validation, dim=CHOICE.dim,
            epochs=CHOICE.epochs, lr=CHOICE.lr, batch_size=CHOICE.batch_size,
            taste_penalty=CHOICE.taste_penalty, own_lr=CHOICE.own_lr,
            select_steps=ctx.config.inner.steps, select_grid=CHOICE.lr_grid, seed=ctx.seed)
        lr, table = tune_choice_lr(model, params, validation, ctx.config.inner.steps,
                                   CHOICE.lr_grid, max_extend=ctx.config.inner.lr_extend)
        state.update(validation=validation, model=model, params=params, inner_lr=lr,
                     tuning=table)
    return state


def lr_edge(lr: float, table: list[dict[str, float]]) -> str:
    """``"low"`` or ``"high"`` when ``lr`` is the smallest or largest rate of a tuning
    ``table`` (after its extensions): the grid does not bracket the best rate.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    rates = sorted(row["inner_lr"] for row in table)
    return "low" if lr == rates[0] else "high" if lr == rates[-1] else ""


def _meta(ctx: SeedContext, order: str) -> tuple[float, MetaChoiceResult, str]:
    state = choice_state(ctx)
    key = f"maml_{order}"
    if key not in state:
        c, o = ctx.config, ctx.config.outer
        state[key] = tune_meta_choice(
            state["model"], state["params"], ctx.data.dataset.interactions,
            ctx.data.split.train, state["validation"], inner_steps=c.inner.steps,
            grid=CHOICE.lr_grid, max_extend=c.inner.lr_extend, k=max(1, c.train_k),
            q=CHOICE.query, order=order, meta_batch=o.meta_batch, outer_lr=o.outer_lr,
            epochs=o.epochs, patience=o.patience, seed=ctx.seed, episodes="first",
            k_range=c.train_k_range, cut=max(c.ks))
    best, result, table = state[key]
    return best, result, lr_edge(best, table)


@method("itemknn", predicts_ratings=False, seed_free=True,
        description="also bought: item-to-item co-purchase similarity to the support toys")
def _itemknn(ctx: SeedContext) -> ItemKNNRecommender:
    d = ctx.data
    return ItemKNNRecommender(d.dataset.interactions, d.split.train, d.dataset.n_items)


@method("choice_global", predicts_ratings=False,
        description="choice model (catalogue softmax) on meta-train purchases, no adaptation")
def _choice_global(ctx: SeedContext) -> ChoiceRecommender:
    s = choice_state(ctx)
    return ChoiceRecommender(s["model"], s["params"], 0, 0.0, name="choice_global")


@method("choice_finetune", predicts_ratings=False,
        description="choice model, taste adapted by SGD steps on the support toys")
def _choice_finetune(ctx: SeedContext) -> MethodFit:
    s = choice_state(ctx)
    rec = ChoiceRecommender(s["model"], s["params"], ctx.config.inner.steps, s["inner_lr"],
                            name="choice_finetune")
    return MethodFit(rec, inner_lr=s["inner_lr"], lr_edge=lr_edge(s["inner_lr"], s["tuning"]))


def _choice_meta(name: str, order: str):  # noqa: ANN202 - a fit function
    def fit(ctx: SeedContext) -> MethodFit:
        s, (lr, result, edge) = choice_state(ctx), _meta(ctx, order)
        rec = ChoiceRecommender(s["model"], result.params, ctx.config.inner.steps, lr,
                                name=name)
        return MethodFit(rec, inner_lr=lr, best_epoch=result.best_epoch,
                         stopped_early=result.stopped_early,
                         epochs_run=len(result.history) - 1, lr_edge=edge)

    return fit


method("choice_fomaml", predicts_ratings=False,
       description="choice model, first-order MAML")(_choice_meta("choice_fomaml", "first"))
method("choice_maml", predicts_ratings=False,
       description="choice model, MAML (second order)")(_choice_meta("choice_maml", "second"))


def _validation_rmse(rec: AdaptedModelRecommender, ctx: SeedContext) -> float:
    batch = ctx.data.val_batch
    pred = rec.predict(batch)
    err = ((pred - batch.query_ratings) ** 2 * batch.query_mask).sum() / batch.query_mask.sum()
    return float(torch.sqrt(err))


@method("choice_combined", predicts_ratings=False, needs=("ratings",),
        description="choice_maml's log P(choose) + log P(r >= 4) from finetune")
def _choice_combined(ctx: SeedContext) -> MethodFit:
    s, (choice_lr, result, _) = choice_state(ctx), _meta(ctx, "second")
    choice = ChoiceRecommender(s["model"], result.params, ctx.config.inner.steps, choice_lr,
                               name="choice_maml")
    g, lr = ctx.global_fit(), ctx.inner_lr("all")
    rating = AdaptedModelRecommender(g.model, g.params, ctx.config.meta_config(lr),
                                     name="finetune")
    sigma = _validation_rmse(rating, ctx)
    rec = CombinedRecommender(choice, rating, sigma if math.isfinite(sigma) else 1.0,
                              threshold=ctx.config.relevance_threshold,
                              name="choice_combined")
    return MethodFit(rec, inner_lr=choice_lr, best_epoch=result.best_epoch,
                     stopped_early=result.stopped_early, epochs_run=len(result.history) - 1)


def oracle_choice_recommender(dataset: Any, threshold: float = 4.0) -> OracleChoiceRecommender:
    """``oracle_choice`` for a ToyShop data set: the generator's probability that each
    shopper buys each toy (given their true taste and number of purchases) and rates it
    ``threshold`` or more.

    Raises
    ------
    ValueError
        If the data set was not made by the ToyShop generator or its files were edited.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    from toyrec_helpers import toyshop as ts
    from toyrec_helpers.ceiling import dataset_latents

    aligned = dataset_latents(dataset)
    lat = aligned.latents
    taste = lat.scores - ts.MU - lat.bias[:, None] - lat.item_effect[None, :]
    logits = ts.CHOICE_TEMPERATURE * taste + lat.log_popularity[None, :]
    logits = logits[np.ix_(aligned.user_rows, aligned.item_rows)]
    n_bought = np.bincount(dataset.interactions["user"], minlength=dataset.n_users)
    return OracleChoiceRecommender(logits, aligned.scores, n_bought, ts.SIGMA_NOISE,
                                   threshold=threshold)


@method("oracle_choice", predicts_ratings=False, seed_free=True, needs=("answer_key",),
        description="the generator's P(buys and rates >= 4) (generated data only)")
def _oracle_choice(ctx: SeedContext) -> OracleChoiceRecommender:
    return oracle_choice_recommender(ctx.data.dataset, ctx.config.relevance_threshold)
