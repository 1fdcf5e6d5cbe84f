"""Two methods beyond one shared starting point: ``mamo`` and ``encoder``.

* ``mamo`` (:mod:`toyrec_helpers.mamo`): MAML's inner loop (same steps, the SGD rate tuned
  for ``adapt="all"`` as for ``maml``) from a profile-personalised start, with a
  preference memory; meta-trained from the global model with the protocol's meta-training
  settings, the same (resampled) training episodes and early stopping, like ``maml``.
* ``encoder`` (:mod:`toyrec_helpers.encoder`): a set encoder of the support set that
  modulates the global model (FiLM), no gradient step per shopper; meta-trained end to end
  from the global model with the same episodes, meta-batch, Adam rate, epochs and patience.
  It has no inner rate to tune.

Importing this module registers both entries (after the built-in ones).

Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
"""

from __future__ import annotations

import copy

import torch

from toyrec_helpers.encoder import EncoderRecommender, SetEncoderModel, meta_train_encoder
from toyrec_helpers.evaluate.methods import MethodFit, SeedContext, method
from toyrec_helpers.mamo import Episodes, MamoConfig, MamoRecommender, meta_train_mamo

__all__ = ["ENCODER_WIDTH", "MAMO_SETTINGS"]

MAMO_SETTINGS = MamoConfig()
"""The memory settings of the ``mamo`` entry (fixed, not tuned)."""

ENCODER_WIDTH = 32
"""Width of the ``encoder`` entry's set encoder (fixed, not tuned)."""


def _training_tasks(ctx: SeedContext) -> Episodes:
    """Meta-training's tasks, as for ``maml``: resampled every epoch when the protocol
    resamples (``outer.resample``), else the fixed episodes."""
    d, c = ctx.data, ctx.config
    if getattr(c.outer, "resample", False):
        return d.train_sampler(ctx.seed)
    return d.train_episodes


@method("mamo", description="MAMO: profile memory (personalised start) and preference memory, "
        "then MAML's inner loop")
def _mamo(ctx: SeedContext) -> MethodFit:
    d, c = ctx.data, ctx.config
    g, lr = ctx.global_fit(), ctx.inner_lr("all")
    config = c.meta_config(lr)
    result = meta_train_mamo(g.model, _training_tasks(ctx), d.val_episodes, config,
                             MAMO_SETTINGS, seed=ctx.seed, patience=c.outer.patience)
    rec = MamoRecommender(g.model, result.params, result.memory, config, MAMO_SETTINGS,
                          name="mamo")
    return MethodFit(rec, inner_lr=lr, best_epoch=result.best_epoch,
                     stopped_early=result.stopped_early)


@method("encoder", description="a set encoder of the support set modulates the global model "
        "(FiLM); no gradient step per shopper")
def _encoder(ctx: SeedContext) -> MethodFit:
    d, c = ctx.data, ctx.config
    g = ctx.global_fit()
    base = copy.deepcopy(g.model)  # the encoder starts from the global model's parameters
    base.load_state_dict(g.params)
    torch.manual_seed(ctx.seed)  # the encoder's new layers: from this seed, not from the
    model = SetEncoderModel(base, width=ENCODER_WIDTH)  # methods fitted before it
    # the protocol's meta-batch, Adam rate and epochs; the inner rate is not used
    config = c.meta_config(c.inner.lr_grid[0])
    result = meta_train_encoder(model, _training_tasks(ctx), d.val_episodes, config,
                                seed=ctx.seed, patience=c.outer.patience)
    return MethodFit(EncoderRecommender(model, result.params, name="encoder"),
                     best_epoch=result.best_epoch, stopped_early=result.stopped_early)
