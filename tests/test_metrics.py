"""Tests for toyrec_helpers.metrics (per-user metrics and bootstrap intervals)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score

from toyrec_helpers.metrics import (
    BootstrapCI,
    bootstrap_ci,
    bootstrap_ci_pooled,
    catalogue_masks,
    catalogue_ndcg_at_k,
    hit_rate_at_k,
    mae,
    n_valid,
    ndcg_at_k,
    rmse,
    top_k_indices,
)

L3 = math.log2(3)  # discount denominator of rank 1 (0-based); rank 0 -> 1, rank 2 -> 2


def close(a: torch.Tensor, b: list[float] | torch.Tensor, tol: float = 1e-9) -> bool:
    return torch.allclose(a, torch.as_tensor(b, dtype=torch.float64), atol=tol, equal_nan=True)


# --------------------------------------------------------------------------- MAE / RMSE


PRED = torch.tensor([[3.0, 4.0, 5.0], [1.0, 2.0, 0.0]])
TARGET = torch.tensor([[4.0, 4.0, 3.0], [2.0, 2.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_mae_rmse_hand_computed() -> None:
    # user 0: |errors| = 1, 0, 2 -> MAE = 3/3 = 1, RMSE = sqrt((1 + 0 + 4) / 3) = sqrt(5/3)
    # user 1: |errors| = 1, 0 (third entry is padding) -> MAE = 0.5, RMSE = sqrt(1/2)
    assert close(mae(PRED, TARGET, MASK), [1.0, 0.5])
    assert close(rmse(PRED, TARGET, MASK), [math.sqrt(5 / 3), math.sqrt(0.5)])


def test_mae_rmse_padding_garbage_and_empty_user() -> None:
    pred = torch.cat([PRED, torch.tensor([[7.0, 7.0, 7.0]])])
    target = torch.cat([TARGET, torch.tensor([[1.0, 1.0, 1.0]])])
    mask = torch.cat([MASK, torch.zeros(1, 3)])
    pred[1, 2] = float("nan")  # garbage at a padded position must not leak
    target[1, 2] = float("inf")
    # third user has no real rating -> NaN
    assert close(mae(pred, target, mask), [1.0, 0.5, float("nan")])
    assert close(rmse(pred, target, mask.bool()), [math.sqrt(5 / 3), math.sqrt(0.5), math.nan])


def test_mae_numpy_input_and_grad_tensors() -> None:
    p = PRED.clone().requires_grad_(True)
    out = mae(p, TARGET, MASK)
    assert not out.requires_grad and out.dtype == torch.float64 and out.shape == (2,)
    assert close(mae(PRED.numpy(), TARGET.numpy(), MASK.numpy()), out)


def test_rating_metric_errors() -> None:
    with pytest.raises(ValueError, match="'mask'"):
        mae(PRED, TARGET, MASK * 0.5)
    with pytest.raises(ValueError, match="share one shape"):
        rmse(PRED, TARGET[:, :2], MASK)
    with pytest.raises(ValueError, match="'pred'.*2-D"):
        mae(PRED[0], TARGET[0], MASK[0])
    bad = PRED.clone()
    bad[0, 0] = float("nan")  # NaN at a *real* entry is an error
    with pytest.raises(ValueError, match="'pred'.*rows \\[0\\]"):
        rmse(bad, TARGET, MASK)


# --------------------------------------------------------------------------- query NDCG@k


def test_ndcg_hand_computed() -> None:
    pred = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    target = torch.tensor([[3.0, 5.0, 1.0, 4.0]])
    mask = torch.ones(1, 4)
    # ranked by pred: items 0, 2, 3 -> gains 3, 1, 4: DCG = 3/1 + 1/log2(3) + 4/2
    # ideal gains 5, 4, 3: IDCG = 5/1 + 4/log2(3) + 3/2
    expected = (3 + 1 / L3 + 2) / (5 + 4 / L3 + 1.5)
    assert close(ndcg_at_k(pred, target, mask, k=3), [expected])
    # k = 1: DCG = 3, IDCG = 5
    assert close(ndcg_at_k(pred, target, mask, k=1), [0.6])


def test_ndcg_ties_break_by_lower_index() -> None:
    pred = torch.tensor([[1.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 5.0, 3.0]])
    mask = torch.ones(1, 3)
    # all tied -> order 0, 1, 2. k=1: DCG = 1, IDCG = 5 -> 0.2
    assert close(ndcg_at_k(pred, target, mask, k=1), [0.2])
    # k=3: DCG = 1 + 5/log2(3) + 3/2; IDCG = 5 + 3/log2(3) + 1/2
    assert close(ndcg_at_k(pred, target, mask, k=3), [(2.5 + 5 / L3) / (5.5 + 3 / L3)])
    # reversing the columns reverses the tie-break: first item now has gain 3 -> 3/5
    assert close(ndcg_at_k(pred, target.flip(1), mask, k=1), [0.6])


def test_ndcg_fewer_than_k_items_padding_and_empty_user() -> None:
    # user 0: real items at columns 1 and 3 only (padding holds garbage that would rank first)
    pred = torch.tensor([[99.0, 0.2, float("nan"), 0.8], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([[5.0, 4.0, 5.0, 2.0], [3.0, 3.0, 3.0, 3.0]])
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    # ranked: col 3 (gain 2), col 1 (gain 4) -> DCG = 2 + 4/log2(3); IDCG = 4 + 2/log2(3)
    # user 1 has no real item -> NaN
    out = ndcg_at_k(pred, target, mask, k=3)
    assert close(out, [(2 + 4 / L3) / (4 + 2 / L3), math.nan])
    # k larger than Q is clipped and changes nothing here
    assert close(ndcg_at_k(pred, target, mask, k=10), out)


def test_ndcg_matches_sklearn_on_random_untied_data() -> None:
    g = np.random.default_rng(0)
    t, q = 120, 10
    y = g.integers(1, 6, size=(t, q)).astype(np.float64)  # ties in *ratings* are fine
    s = g.normal(size=(t, q))  # continuous -> untied predictions
    for k in (1, 3, 5, 10):
        ours = ndcg_at_k(torch.from_numpy(s), torch.from_numpy(y), np.ones((t, q)), k=k)
        ref = [ndcg_score(y[i : i + 1], s[i : i + 1], k=k) for i in range(t)]
        assert close(ours, ref, tol=1e-10)
        ref_it = [ndcg_score(y[i : i + 1], s[i : i + 1], k=k, ignore_ties=True) for i in range(t)]
        assert close(ours, ref_it, tol=1e-10)
        assert ours.mean().item() == pytest.approx(ndcg_score(y, s, k=k), abs=1e-12)


def test_ndcg_padding_never_affects_results() -> None:
    g = np.random.default_rng(1)
    t, q_real, q_pad = 100, 6, 9
    y = g.integers(1, 6, size=(t, q_real)).astype(np.float64)
    s = g.normal(size=(t, q_real))
    ref = ndcg_at_k(s, y, np.ones((t, q_real)), k=3)
    # variable lengths: user i keeps its first n_i items, compared with sklearn per row
    n_real = g.integers(1, q_real + 1, size=t)
    yp = g.normal(size=(t, q_pad)) * 1e6  # garbage everywhere, then real items placed
    sp = g.normal(size=(t, q_pad)) * 1e6
    mp = np.zeros((t, q_pad))
    for i in range(t):  # scatter each user's real items to random padded positions
        cols = np.sort(g.choice(q_pad, size=q_real, replace=False))
        yp[i, cols], sp[i, cols], mp[i, cols] = y[i], s[i], 1.0
    assert close(ndcg_at_k(sp, yp, mp, k=3), ref)
    # now truncate to n_i real items and compare each user with sklearn on its real items
    mp_short = np.zeros((t, q_real))
    for i in range(t):
        mp_short[i, : n_real[i]] = 1.0
    ours = ndcg_at_k(s, y, mp_short, k=3)
    for i in range(t):
        n = n_real[i]
        if n == 1:  # sklearn rejects a single document; one real item is always a perfect 1
            assert ours[i].item() == pytest.approx(1.0)
        else:
            assert ours[i].item() == pytest.approx(
                ndcg_score(y[i : i + 1, :n], s[i : i + 1, :n], k=3), abs=1e-10
            )


def test_ndcg_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="'k'"):
        ndcg_at_k(PRED, TARGET, MASK, k=0)


# --------------------------------------------------------------------------- catalogue metrics


def catalogue_reference(
    scores: np.ndarray, relevant: np.ndarray, exclude: np.ndarray, k: int
) -> tuple[list[float], list[float]]:
    """Slow pure-Python HR@k and binary NDCG@k (ties: lower item index first)."""
    hr, nd = [], []
    for s, r, e in zip(scores.tolist(), relevant.tolist(), exclude.tolist(), strict=True):
        n_rel = sum(r)
        if n_rel == 0:
            hr.append(math.nan)
            nd.append(math.nan)
            continue
        cand = sorted((i for i in range(len(s)) if not e[i]), key=lambda i: (-s[i], i))[:k]
        dcg = sum(1 / math.log2(j + 2) for j, i in enumerate(cand) if r[i])
        idcg = sum(1 / math.log2(j + 2) for j in range(min(k, n_rel)))
        hr.append(float(any(r[i] for i in cand)))
        nd.append(dcg / idcg)
    return hr, nd


def test_catalogue_hand_computed() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.8, 0.7, 0.2, 0.3]])
    relevant = torch.tensor([[False, False, False, True, False, True]])
    exclude = torch.tensor([[False, True, False, False, False, False]])
    # item 1 excluded; ranking: 2 (0.8), 3 (0.7), 5 (0.3), 4, 0
    # k=3: relevances 0, 1, 1 -> DCG = 1/log2(3) + 1/log2(4); IDCG (2 relevant) = 1 + 1/log2(3)
    assert close(
        catalogue_ndcg_at_k(scores, relevant, exclude, k=3), [(1 / L3 + 0.5) / (1 + 1 / L3)]
    )
    assert close(hit_rate_at_k(scores, relevant, exclude, k=3), [1.0])
    # k=1: top item 2 is not relevant -> HR 0, NDCG 0
    assert close(hit_rate_at_k(scores, relevant, exclude, k=1), [0.0])
    assert close(catalogue_ndcg_at_k(scores, relevant, exclude, k=1), [0.0])
    # k=2: relevance 0, 1 -> DCG = 1/log2(3); IDCG = 1 + 1/log2(3)
    assert close(catalogue_ndcg_at_k(scores, relevant, exclude, k=2), [(1 / L3) / (1 + 1 / L3)])
    # k beyond the catalogue is clipped: same as k = 6 (all 5 candidates ranked)
    assert close(
        catalogue_ndcg_at_k(scores, relevant, exclude, k=50),
        catalogue_ndcg_at_k(scores, relevant, exclude, k=6),
    )


def test_catalogue_exclusion_changes_ranking() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    relevant = torch.tensor([[False, False, True, False]])
    none = torch.zeros(1, 4, dtype=torch.bool)
    support = torch.tensor([[True, False, False, False]])
    # without exclusion top-2 = items 0, 1 -> miss
    assert close(hit_rate_at_k(scores, relevant, none, k=2), [0.0])
    assert close(catalogue_ndcg_at_k(scores, relevant, none, k=2), [0.0])
    # excluding support item 0: top-2 = items 1, 2 -> hit at rank 1: NDCG = (1/log2 3) / 1
    assert close(hit_rate_at_k(scores, relevant, support, k=2), [1.0])
    assert close(catalogue_ndcg_at_k(scores, relevant, support, k=2), [1 / L3])


def test_catalogue_ties_and_no_relevant_user() -> None:
    scores = torch.zeros(2, 4)  # all tied -> order 0, 1, 2, 3
    relevant = torch.tensor([[False, True, False, False], [False, False, False, False]])
    exclude = torch.zeros(2, 4, dtype=torch.bool)
    # user 0: relevant item 1 at rank 1 -> HR@1 = 0, HR@2 = 1, NDCG@2 = 1/log2(3)
    # user 1: no relevant item -> NaN
    assert close(hit_rate_at_k(scores, relevant, exclude, k=1), [0.0, math.nan])
    assert close(hit_rate_at_k(scores, relevant, exclude, k=2), [1.0, math.nan])
    assert close(catalogue_ndcg_at_k(scores, relevant, exclude, k=2), [1 / L3, math.nan])


def test_catalogue_matches_python_reference() -> None:
    g = np.random.default_rng(2)
    t, n = 200, 40
    scores = g.integers(0, 8, size=(t, n)).astype(np.float32)  # many ties on purpose
    relevant = g.random((t, n)) < 0.08
    exclude = (g.random((t, n)) < 0.2) & ~relevant
    scores[exclude] = np.nan  # excluded items may hold anything
    assert (relevant.sum(axis=1) == 0).any()  # NaN users are exercised
    for k in (1, 5, 10, 60):
        hr_ref, nd_ref = catalogue_reference(np.nan_to_num(scores, nan=0.0), relevant, exclude, k)
        assert close(hit_rate_at_k(scores, relevant, exclude, k=k), hr_ref)
        assert close(catalogue_ndcg_at_k(scores, relevant, exclude, k=k), nd_ref, tol=1e-12)


def test_top_k_indices_equals_the_head_of_a_stable_sort() -> None:
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 6, (300, 50), generator=g).double()  # many ties
    scores[torch.rand(300, 50, generator=g) < 0.3] = -torch.inf  # excluded items
    scores[0] = -torch.inf  # a row with nothing left to rank
    scores[1] = 2.0  # a row of ties only
    full = torch.sort(scores, dim=1, descending=True, stable=True).indices
    for k in (0, 1, 7, 10, 50):
        assert torch.equal(top_k_indices(scores, k), full[:, :k])
    with pytest.raises(ValueError, match="argument 'k'"):
        top_k_indices(scores, 51)


def test_catalogue_errors() -> None:
    scores = torch.zeros(1, 3)
    both = torch.tensor([[True, False, False]])
    with pytest.raises(ValueError, match="overlap"):
        hit_rate_at_k(scores, both, both)
    bad = torch.tensor([[0.0, float("nan"), 1.0]])
    with pytest.raises(ValueError, match="'scores'"):
        catalogue_ndcg_at_k(bad, both, torch.zeros(1, 3))  # NaN at a candidate item (1)
    # the same NaN at an excluded item is fine (excluded items are never ranked):
    # ranking = item 2 (1.0), item 0 (0.0) -> relevant item 0 at rank 1 -> NDCG = 1/log2(3)
    excl_1 = torch.tensor([[False, True, False]])
    assert close(catalogue_ndcg_at_k(bad, both, excl_1), [1 / L3])
    with pytest.raises(ValueError, match="share one shape"):
        catalogue_ndcg_at_k(torch.zeros(1, 4), both, ~both)


def test_catalogue_masks_scatter() -> None:
    support_items = torch.tensor([[3, 0, 0], [0, 5, 0]])  # padding holds item 0
    support_mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    query_items = torch.tensor([[1, 2, 4, 0], [2, 0, 1, 4]])
    query_ratings = torch.tensor([[4.0, 3.5, 5.0, 5.0], [4.0, 1.0, 4.5, 3.9]])
    query_mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
    relevant, exclude = catalogue_masks(
        support_items, support_mask, query_items, query_ratings, query_mask, n_items=6
    )
    # user 0: relevant = {1 (4.0 >= 4), 4 (5.0)}; item 2 has 3.5; padded item 0 (5.0) ignored
    # user 1: relevant = {2, 1}; item 4 has 3.9; padded entry (item 0) ignored
    # exclude: user 0 = {3} (padding item 0 ignored); user 1 = {0, 5} (item 0 is real here)
    assert relevant.tolist() == [
        [False, True, False, False, True, False],
        [False, True, True, False, False, False],
    ]
    assert exclude.tolist() == [
        [False, False, False, True, False, False],
        [True, False, False, False, False, True],
    ]
    assert relevant.dtype == torch.bool and exclude.dtype == torch.bool
    # a higher threshold keeps only ratings >= 4.5
    rel_hi, _ = catalogue_masks(
        support_items,
        support_mask,
        query_items,
        query_ratings,
        query_mask,
        n_items=6,
        threshold=4.5,
    )
    assert rel_hi.nonzero().tolist() == [[0, 4], [1, 1]]


def test_catalogue_masks_errors() -> None:
    items = torch.tensor([[0, 7]])
    ones = torch.ones(1, 2)
    with pytest.raises(ValueError, match="'query_items'.*7.*\\[0, 1\\]"):
        catalogue_masks(items[:, :1], ones[:, :1], items, ones * 5, ones, n_items=6)
    # an out-of-range index at a *padded* position is fine
    rel, _ = catalogue_masks(
        items[:, :1], ones[:, :1], items, ones * 5, torch.tensor([[1.0, 0.0]]), n_items=6
    )
    assert rel.nonzero().tolist() == [[0, 0]]
    with pytest.raises(ValueError, match="'n_items'"):
        catalogue_masks(items, ones, items, ones, ones, n_items=0)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_hand_cases() -> None:
    # constant values: every resample has the same mean -> degenerate interval
    assert bootstrap_ci(torch.full((20,), 0.7)) == pytest.approx((0.7, 0.7, 0.7))
    # values {0, 1}: resample means lie in {0, 0.5, 1}, each extreme with probability 1/4,
    # so the 2.5% and 97.5% quantiles are 0 and 1
    ci = bootstrap_ci([0.0, 1.0], n_boot=2000)
    assert isinstance(ci, BootstrapCI) and tuple(ci) == (0.5, 0.0, 1.0)


def test_bootstrap_deterministic_contains_mean_and_narrows() -> None:
    g = np.random.default_rng(3)
    v = g.normal(loc=2.0, size=400)
    a, b = bootstrap_ci(v, seed=5), bootstrap_ci(torch.from_numpy(v), seed=5)
    assert a == b
    assert bootstrap_ci(v, seed=6) != a
    mean, low, high = a
    assert mean == pytest.approx(v.mean()) and low < mean < high
    small = bootstrap_ci(v[:25], seed=5)
    assert (high - low) < 0.5 * (small.high - small.low)  # width ~ 1/sqrt(n): ratio ~ 0.25


def test_bootstrap_coverage_normal_sample() -> None:
    g = np.random.default_rng(4)
    reps, n = 300, 40
    hits = 0
    for r in range(reps):
        _, low, high = bootstrap_ci(g.normal(size=n), n_boot=300, seed=r)
        hits += low <= 0.0 <= high
    # percentile bootstrap of a normal mean with n=40: true coverage ~0.93-0.94;
    # binomial s.d. over 300 repetitions ~0.014
    assert 0.88 <= hits / reps <= 0.98


def test_bootstrap_nan_handling() -> None:
    v = torch.tensor([1.0, float("nan"), 3.0, 2.0, float("nan")])
    assert n_valid(v) == 3 and n_valid(v.numpy()) == 3
    assert bootstrap_ci(v, seed=1) == bootstrap_ci([1.0, 3.0, 2.0], seed=1)
    with pytest.raises(ValueError, match="no non-NaN"):
        bootstrap_ci([math.nan, math.nan])
    with pytest.raises(ValueError, match="1-D"):
        bootstrap_ci(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="'level'"):
        bootstrap_ci([1.0], level=95)


def test_bootstrap_pooled() -> None:
    g = np.random.default_rng(5)
    # one seed: the pooled scheme reduces to the plain bootstrap with the same generator
    v = g.normal(size=60)
    assert bootstrap_ci_pooled([v], seed=2) == bootstrap_ci(v, seed=2)
    # constant per-seed values: mean of seed means (1 + 3) / 2, no spread
    assert bootstrap_ci_pooled([[1.0, 1.0, 1.0], np.array([3.0, 3.0])]) == (2.0, 2.0, 2.0)
    # different user counts and NaNs per seed; deterministic; averaging seeds narrows
    seeds = [g.normal(loc=i, size=80 + 10 * i) for i in range(4)]
    seeds[1][:5] = np.nan
    pooled = bootstrap_ci_pooled(seeds, seed=9)
    assert pooled == bootstrap_ci_pooled([torch.from_numpy(s) for s in seeds], seed=9)
    assert pooled.mean == pytest.approx(np.mean([np.nanmean(s) for s in seeds]))
    assert pooled.low < pooled.mean < pooled.high
    single = bootstrap_ci(seeds[0], seed=9)
    assert (pooled.high - pooled.low) < 0.75 * (single.high - single.low)  # ~ 1/sqrt(4)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci_pooled([])
    with pytest.raises(ValueError, match=r"values_per_seed\[1\]"):
        bootstrap_ci_pooled([[1.0], [math.nan]])


def test_metrics_vectorised_over_many_users() -> None:
    # a large batch runs in one call and agrees row-by-row with a single-user call
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(2000, 500, generator=g)
    relevant = torch.rand(2000, 500, generator=g) < 0.02
    exclude = (torch.rand(2000, 500, generator=g) < 0.05) & ~relevant
    out = catalogue_ndcg_at_k(scores, relevant, exclude, k=10)
    assert out.shape == (2000,)
    assert close(out[7:8], catalogue_ndcg_at_k(scores[7:8], relevant[7:8], exclude[7:8]))
