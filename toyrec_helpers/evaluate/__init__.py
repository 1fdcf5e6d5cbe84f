"""The cold-start evaluation protocol: every method, every K, several training seeds.

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).

The protocol (every setting lives in one frozen :class:`EvalConfig`, written into the JSON)
---------------------------------------------------------------------------------------------
1. **Users, not ratings, are split.** ``split_users(n_users, (0.7, 0.1, 0.2), seed=0)``
   gives meta-train, meta-validation and meta-test shoppers; the split is the same for
   every training seed. Feature vocabularies and standardisation are fitted on the
   meta-train shoppers only (:func:`toyrec_helpers.features.encode_dataset`).
2. **Training data.** Everything that is *trained* (the global model, the article model,
   item popularity) sees the ratings of meta-train shoppers only
   (:attr:`EvalData.train_interactions` holds nothing else). Meta-training episodes are
   drawn afresh every epoch from each meta-train shopper's whole history
   (:class:`~toyrec_helpers.episodes.EpisodeSampler`: a random point in time, support =
   the K ratings before it with K uniform on ``min(ks)..max(ks)``, query = up to
   ``Q = 10`` after it), so one meta-learned model serves every K. Meta-validation
   episodes, four per meta-validation shopper drawn the same way once, tune inner
   learning rates and pick the best meta-training epoch (``outer.resample=False`` gives
   the fixed ``K=5, Q=10`` first-ratings episodes of chapter 5 instead).
3. **Meta-test episodes.** For each meta-test shopper, in time order: the *support set*
   at shot ``K`` is their first ``K`` ratings (``K`` in ``ks``, default 1, 3, 5, 10); the
   *query set* is every rating after their first ``max(ks)`` ratings, **the same query
   for every K**. A K-shot curve therefore compares like with like: only what the method
   was told changes, never what it is judged on. Ratings ``K+1 .. max(ks)`` are used by
   neither side at shot ``K``. Shoppers with fewer than ``max(ks) + min_query`` ratings
   are skipped and counted (:attr:`EvalResult.skipped_users`, and the JSON's
   ``protocol.users.skipped``).
4. **Methods see only the support ratings of test shoppers.** Each recommender is
   called with a copy of the test batch whose query fields are blanked (zeros), and asked
   to score the whole catalogue; query ratings are used only by the metrics.
5. **Methods** (names as in tables): ``popularity`` (shrunk item mean, also its ranking
   score), ``popularity_count`` (the number of meta-train ratings of an item: a ranking
   only, no rating metrics), ``global``
   (:func:`~toyrec_helpers.baselines.fit_global`, no adaptation),
   ``article`` (:func:`~toyrec_helpers.baselines.fit_article`, per-user Adam steps),
   ``finetune`` (the global model plus ``inner.steps`` SGD steps on the support set),
   ``fomaml``, ``maml`` (second order), ``metasgd`` (Meta-SGD, one learned rate per
   parameter tensor, initialised at the tuned rate), ``maml_local`` (MAML adapting the
   decision layers only, MeLU's local layers), ``anil`` (MAML adapting the final linear
   layer only) and ``oracle`` (the ToyShop answer key, only for data made by the
   generator). Meta-learned methods start from that seed's global-model parameters and
   train with ``MetaConfig(inner_steps=5, inner_lr=<tuned>, meta_batch=32,
   outer_lr=1e-3, epochs=10)``, keeping the best meta-validation epoch (early stopping
   with patience 3); the epochs run and kept are stored. Each method is one entry of a registry
   (:mod:`toyrec_helpers.evaluate.methods`): a new method is one fit function and one
   :func:`register_method` (or ``@method``) call.
6. **Fair tuning budget.** Every adapted method gets the same procedure for its inner
   learning rate: the log-spaced grid ``inner.lr_grid`` (default
   :data:`~toyrec_helpers.baselines.BRACKETED_LR_GRID`, 1e-4 to 0.3), scored by the mean
   query MSE of the meta-validation episodes after adapting from the global model's
   parameters (:func:`~toyrec_helpers.baselines.tune_rate_bracketed`, one rule for all).
   When the best rate lies at an edge, the grid is extended on that side (up to
   ``inner.lr_extend`` rates); a rate still at an edge is flagged (``lr_edge`` in the
   fits and the JSON, a warning in the command line), and so is a method whose
   validation error after adapting exceeds its error without adapting
   (``worse_than_unadapted``). ``finetune``, ``fomaml``, ``maml`` and ``metasgd`` share
   the rate tuned for ``adapt="all"``, ``maml_local`` and ``anil`` get their own
   (``adapt="head"``, ``"last"``), and ``article`` its Adam rate by the same rule.
7. **Seeds.** Each training seed (default 0, 1, 2) changes model initialisation and the
   order of minibatches and meta-batches. Each method is trained once per seed and then
   evaluated at every K. ``popularity``, ``popularity_count`` and ``oracle`` do not depend
   on the seed: they are computed once and their values repeated for each seed.
8. **Metrics** (:mod:`toyrec_helpers.metrics`), one value per shopper: ``mae`` and
   ``rmse`` of the query ratings (skipped for methods whose scores are not ratings),
   ``ndcg@3`` (the query items ranked by predicted rating, graded by the true rating:
   the MeLU protocol), and ``hr@10`` and ``ndcg@10`` over the full catalogue (relevant
   = query items rated ``>= relevance_threshold``; candidates = every item except the
   shopper's first ``max(ks)`` rated items, the same candidates for every K; set
   ``catalogue_exclude="support"`` to exclude only the K support items). A shopper with
   no relevant query item has no catalogue value (``NaN``) and is not counted in
   ``n_users`` for those metrics.
9. **Summary.** The mean over seeds of the mean over shoppers, with a 95% percentile
   bootstrap interval. The same shoppers are scored under every seed, so by default
   (``ci_method="paired"``) shoppers are resampled *jointly* across seeds
   (:func:`~toyrec_helpers.metrics.bootstrap_ci` of each shopper's mean over seeds);
   ``ci_method="pooled"`` resamples shoppers independently within each seed
   (:func:`~toyrec_helpers.metrics.bootstrap_ci_pooled`), which treats the seeds as
   different shoppers and gives intervals up to ``sqrt(len(seeds))`` times too narrow.
   Neither interval includes seed-to-seed variation: the summary's ``seed_sd`` is the
   standard deviation over seeds of the mean over shoppers.
10. **Paired differences.** :meth:`EvalResult.paired` (the JSON's ``paired`` list): for
   every K and metric, each method minus ``finetune``, minus ``global`` and minus
   ``popularity`` (rating metrics) or ``popularity_count`` (ranking metrics), the mean
   over shoppers of the per-shopper difference (each shopper's mean over seeds) with its
   95% bootstrap interval (:mod:`toyrec_helpers.evaluate.paired`). Every per-shopper
   value is stored next to the JSON in ``<name>.per_shopper.npz``, which the JSON names
   with its SHA-256 (:func:`~toyrec_helpers.evaluate.paired.read_per_shopper`).
"""

from toyrec_helpers.evaluate import builtin  # importing it registers the built-in methods
from toyrec_helpers.evaluate.methods import (
    MethodFit,
    MethodSpec,
    SeedContext,
    fit_method,
    fit_methods,
    get_method,
    method,
    method_names,
    register_method,
    resolve_methods,
    unregister_method,
)
from toyrec_helpers.evaluate.protocol import EvalData, evaluate, prepare
from toyrec_helpers.evaluate.report import (
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    EvalResult,
    check_json_path,
    format_table,
)
from toyrec_helpers.evaluate.scoring import METRICS, RATING_METRICS, score_recommender
from toyrec_helpers.evaluate.settings import (
    ArticleSettings,
    EvalConfig,
    InnerSettings,
    OuterSettings,
    SupervisedSettings,
)

METHODS: tuple[str, ...] = builtin.METHODS
"""The built-in method names, in table order (:func:`method_names` also lists methods
registered later)."""

import toyrec_helpers.evaluate.methods_beyond  # noqa: E402, F401 (chapter 9's methods)
import toyrec_helpers.evaluate.methods_hybrid  # noqa: E402, F401 (chapter 7's methods)
from toyrec_helpers.evaluate import methods_choice  # noqa: E402, F401 (chapter 8's methods)

__all__ = [
    "METHODS", "METRICS", "PROTOCOL_NAME", "PROTOCOL_VERSION", "RATING_METRICS", "ArticleSettings",
    "EvalConfig", "EvalData", "EvalResult", "InnerSettings", "MethodFit", "MethodSpec",
    "OuterSettings", "SeedContext", "SupervisedSettings", "check_json_path", "evaluate",
    "fit_method", "fit_methods", "format_table", "get_method", "method", "method_names", "prepare",
    "register_method", "resolve_methods", "score_recommender", "unregister_method"
]
from toyrec_helpers.evaluate import methods_ceiling  # noqa: E402, F401 (the K-shot ceiling bayes)
