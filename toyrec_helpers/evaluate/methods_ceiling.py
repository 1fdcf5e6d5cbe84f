"""The K-shot ceiling ``bayes`` as a method of the protocol (generated data only).

:class:`~toyrec_helpers.ceiling.BayesCeiling` predicts each meta-test shopper's query
ratings by the ToyShop generator's own posterior predictive given their attributes and
their K support ratings: the best any method could do with what it is told at that K
(the median, optimal for MAE). Like ``oracle`` it needs the answer key (data made by the
generator) and does not depend on the training seed.

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
"""

from __future__ import annotations

from toyrec_helpers.ceiling import BayesCeiling
from toyrec_helpers.evaluate.methods import SeedContext, method
from toyrec_helpers.recommenders import Recommender

__all__: list[str] = []


@method("bayes", seed_free=True, needs=("answer_key",),
        description="the generator's posterior predictive given the K support ratings "
                    "(generated data only): the K-shot ceiling")
def _bayes(ctx: SeedContext) -> Recommender:
    return BayesCeiling(ctx.data.dataset, seed=ctx.config.split_seed,
                        query_after=max(ctx.config.ks))
