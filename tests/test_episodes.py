"""Tests for toyrec_helpers.episodes: user splits, support/query episodes, padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datadirs import TINY_COUNTS, TOYSHOP_DIR, write_tiny

from toyrec_helpers.data import load_dataset
from toyrec_helpers.episodes import (
    Episode,
    EpisodeBatch,
    candidate_items,
    candidate_mask,
    collate,
    make_episodes,
    split_users,
)


@pytest.fixture(scope="module")
def toyshop():
    return load_dataset(TOYSHOP_DIR)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_dataset(write_tiny(tmp_path_factory.mktemp("episodes") / "tiny"))


@pytest.fixture(scope="module")
def tiny_no_time(tmp_path_factory):
    directory = write_tiny(tmp_path_factory.mktemp("episodes") / "nots", with_timestamp=False)
    with pytest.warns(UserWarning, match="no timestamp column"):
        return load_dataset(directory)


def user_rows(dataset, user: int):
    inter = dataset.interactions
    return inter[inter["user"] == user]


# --- split_users ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_users", [3, 10, 101, 3000])
def test_split_is_disjoint_sorted_and_covers_every_user(n_users):
    split = split_users(n_users, seed=5)
    parts = [split.train, split.val, split.test]
    joined = np.concatenate(parts)
    assert len(joined) == n_users
    assert np.array_equal(np.sort(joined), np.arange(n_users))
    for part in parts:
        assert np.all(np.diff(part) > 0)


@pytest.mark.parametrize(
    ("n_users", "fractions"),
    [(3000, (0.7, 0.1, 0.2)), (101, (0.5, 0.25, 0.25)), (17, (0.6, 0.2, 0.2)), (50, (1, 0, 0))],
)
def test_split_respects_fractions(n_users, fractions):
    split = split_users(n_users, fractions=fractions, seed=1)
    for part, share in zip((split.train, split.val, split.test), fractions, strict=True):
        assert abs(len(part) - share * n_users) <= 1


def test_split_is_deterministic_for_a_seed():
    a, b, c = split_users(500, seed=7), split_users(500, seed=7), split_users(500, seed=8)
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.test, c.test)


@pytest.mark.parametrize(
    ("n_users", "fractions", "match"),
    [
        (2, (0.7, 0.1, 0.2), "at least 3"),
        (10, (0.7, 0.1, 0.1), "summing to 1"),
        (10, (0.7, 0.4, -0.1), "non-negative"),
        (10, (0.5, 0.5), "three"),
    ],
)
def test_split_rejects_bad_arguments(n_users, fractions, match):
    with pytest.raises(ValueError, match=match):
        split_users(n_users, fractions=fractions)


# --- make_episodes on the committed ToyShop ---------------------------------------------------


@pytest.fixture(scope="module")
def real_episodes(toyshop):
    return make_episodes(toyshop.interactions, np.arange(toyshop.n_users), k_support=5, n_query=10)


def test_real_episodes_have_k_support_and_q_query(toyshop, real_episodes):
    assert len(real_episodes) == toyshop.n_users  # everyone has >= 15 ratings
    assert real_episodes.n_skipped == 0
    assert real_episodes.skipped_users.dtype == np.int64
    assert (real_episodes.k_support, real_episodes.n_query) == (5, 10)
    assert np.array_equal(real_episodes.users, np.arange(toyshop.n_users))
    for e in real_episodes.episodes[:50]:
        assert e.support_items.shape == (5,) and e.query_items.shape == (10,)
        assert e.support_items.dtype == np.int64 and e.query_items.dtype == np.int64
        assert e.support_ratings.dtype == np.float32 and e.query_ratings.dtype == np.float32


def test_no_leakage_support_precedes_query_in_time(toyshop, real_episodes):
    inter = toyshop.interactions
    stamp = dict(
        zip(
            zip(inter["user"].to_numpy(), inter["item"].to_numpy(), strict=True),
            inter["timestamp"].to_numpy(),
            strict=True,
        )
    )
    for e in real_episodes.episodes:
        support = [stamp[(e.user, i)] for i in e.support_items]
        query = [stamp[(e.user, i)] for i in e.query_items]
        assert max(support) <= min(query), e.user
        assert not set(e.support_items.tolist()) & set(e.query_items.tolist())


def test_support_is_the_first_k_ratings_in_time(toyshop, real_episodes):
    inter = toyshop.interactions
    starts = np.searchsorted(inter["user"].to_numpy(), np.arange(toyshop.n_users))
    items, ratings = inter["item"].to_numpy(), inter["rating"].to_numpy()
    for e in real_episodes.episodes[::37]:
        rows = user_rows(toyshop, e.user).sort_values("timestamp", kind="stable")
        assert e.support_items.tolist() == rows["item"].tolist()[:5]
        assert e.support_ratings.tolist() == rows["rating"].tolist()[:5]
        assert e.query_items.tolist() == rows["item"].tolist()[5:15]
        lo = starts[e.user]
        assert np.array_equal(e.query_ratings, ratings[lo + 5 : lo + 15])
        assert np.array_equal(e.support_items, items[lo : lo + 5])


def test_real_users_with_too_few_ratings_are_skipped_and_counted(toyshop):
    users = np.arange(toyshop.n_users)
    eps = make_episodes(toyshop.interactions, users, k_support=10, n_query=20)
    per_user = toyshop.ratings_per_user()
    assert np.array_equal(eps.skipped_users, users[per_user < 30])
    assert eps.n_skipped > 0
    assert eps.n_skipped + len(eps) == toyshop.n_users
    assert np.array_equal(eps.users, users[per_user >= 30])


# --- make_episodes on the TinyShop --------------------------------------------------------


def test_tiny_support_is_first_k_and_short_users_are_skipped(tiny):
    # ratings per user: u1 6, u2 5, u3 4, u4 3, u5 2
    assert tiny.ratings_per_user().tolist() == list(TINY_COUNTS.values())
    eps = make_episodes(tiny.interactions, np.array([4, 0, 3, 2, 1]), k_support=2, n_query=2)
    assert eps.skipped_users.tolist() == [4, 3]  # u5 (2) and u4 (3) have fewer than 4
    assert eps.n_skipped == 2
    assert eps.users.tolist() == [0, 2, 1]  # the order of the request
    u1 = eps.episodes[0]
    # u1 rated i1..i6 in time order (the file lists them newest first)
    assert u1.support_items.tolist() == [0, 1] and u1.support_ratings.tolist() == [4.0, 1.0]
    assert u1.query_items.tolist() == [2, 3] and u1.query_ratings.tolist() == [5.0, 4.0]
    u3 = eps.episodes[1]  # u3: i2, i1, i3, i6 in time order
    assert u3.support_items.tolist() == [1, 0] and u3.query_items.tolist() == [2, 5]


def test_user_with_exactly_k_plus_q_ratings_is_kept(tiny):
    eps = make_episodes(tiny.interactions, np.array([2]), k_support=1, n_query=3)
    assert len(eps) == 1 and eps.n_skipped == 0
    eps = make_episodes(tiny.interactions, np.array([2]), k_support=2, n_query=3)
    assert len(eps) == 0 and eps.skipped_users.tolist() == [2]


def test_n_query_none_takes_the_rest(tiny):
    eps = make_episodes(tiny.interactions, np.arange(5), k_support=3, n_query=None)
    assert eps.n_query is None
    # min_query=1: need 4 ratings -> u4 (3) and u5 (2) skipped
    assert eps.skipped_users.tolist() == [3, 4]
    lengths = {e.user: (len(e.support_items), len(e.query_items)) for e in eps.episodes}
    assert lengths == {0: (3, 3), 1: (3, 2), 2: (3, 1)}
    assert eps.episodes[0].query_items.tolist() == [3, 4, 5]
    eps = make_episodes(tiny.interactions, np.arange(5), k_support=3, n_query=None, min_query=2)
    assert eps.skipped_users.tolist() == [2, 3, 4]


def test_zero_shot_episodes(tiny):
    eps = make_episodes(tiny.interactions, np.arange(5), k_support=0, n_query=None)
    assert eps.n_skipped == 0
    assert all(len(e.support_items) == 0 for e in eps.episodes)
    assert [len(e.query_items) for e in eps.episodes] == list(TINY_COUNTS.values())


def test_make_episodes_rejects_bad_arguments(tiny):
    inter = tiny.interactions
    with pytest.raises(ValueError, match="k_support"):
        make_episodes(inter, np.arange(5), k_support=-1)
    with pytest.raises(ValueError, match="n_query"):
        make_episodes(inter, np.arange(5), k_support=1, n_query=0)
    with pytest.raises(ValueError, match="sorted by user"):
        make_episodes(inter.iloc[::-1], np.arange(5), k_support=1, n_query=1)


def test_episodes_without_timestamps_are_random_per_user_and_seeded(tiny_no_time):
    inter = tiny_no_time.interactions
    assert "timestamp" not in inter.columns
    users = np.array([0, 1])

    def cut(seed):
        eps = make_episodes(inter, users, k_support=2, n_query=None, seed=seed)
        return [(e.support_items.tolist(), e.query_items.tolist()) for e in eps.episodes]

    first = cut(0)
    assert cut(0) == first  # deterministic for a seed
    outcomes = {str(cut(seed)) for seed in range(12)}
    assert len(outcomes) > 1  # another seed, another split
    for seed in range(12):
        for (support, query), user in zip(cut(seed), users, strict=True):
            # a partition of the user's own ratings, ratings kept with their items
            assert sorted(support + query) == sorted(user_rows(tiny_no_time, user)["item"])
    # ratings stay attached to their items
    eps = make_episodes(inter, users, k_support=2, n_query=None, seed=3)
    truth = dict(zip(zip(inter["user"], inter["item"], strict=True), inter["rating"], strict=True))
    for e in eps.episodes:
        for items, ratings in ((e.support_items, e.support_ratings),
                               (e.query_items, e.query_ratings)):  # fmt: skip
            assert [truth[(e.user, i)] for i in items] == ratings.tolist()


def test_episodes_without_timestamps_are_not_in_file_order(tiny_no_time):
    # u1's first two ratings in time (and index) order are i1, i2; some seed must differ
    supports = {
        tuple(
            make_episodes(tiny_no_time.interactions, np.array([0]), k_support=2, seed=s)
            .episodes[0]
            .support_items.tolist()
        )
        for s in range(12)
    }
    assert len(supports) > 1


# --- collate, candidates ---------------------------------------------------------------


def ragged_episodes() -> list[Episode]:
    def ep(user, s_items, s_ratings, q_items, q_ratings):
        return Episode(
            user=user,
            support_items=np.array(s_items, dtype=np.int64),
            support_ratings=np.array(s_ratings, dtype=np.float32),
            query_items=np.array(q_items, dtype=np.int64),
            query_ratings=np.array(q_ratings, dtype=np.float32),
        )

    return [
        ep(7, [3, 5, 2], [4.0, 2.0, 5.0], [1], [3.0]),
        ep(2, [0], [1.0], [4, 6, 8, 9], [5.0, 4.0, 2.0, 1.0]),
        ep(9, [], [], [3, 1], [2.0, 2.0]),
        ep(4, [6, 1], [3.0, 3.0], [7, 2, 0], [4.0, 1.0, 5.0]),
    ]


def check_batch_holds(batch: EpisodeBatch, episodes: list[Episode]) -> None:
    assert len(batch) == len(episodes)
    assert batch.users.tolist() == [e.user for e in episodes]
    for t, e in enumerate(episodes):
        for items, ratings, mask, e_items, e_ratings in (
            (batch.support_items, batch.support_ratings, batch.support_mask,
             e.support_items, e.support_ratings),
            (batch.query_items, batch.query_ratings, batch.query_mask,
             e.query_items, e.query_ratings),
        ):  # fmt: skip
            n = len(e_items)
            assert float(mask[t].sum()) == n
            assert mask[t, :n].tolist() == [1.0] * n
            assert mask[t, n:].tolist() == [0.0] * (mask.shape[1] - n)
            assert items[t, :n].tolist() == e_items.tolist()
            assert ratings[t, :n].tolist() == e_ratings.tolist()
            assert (items[t, n:] == 0).all() and (ratings[t, n:] == 0).all()


def test_collate_pads_and_masks():
    episodes = ragged_episodes()
    batch = collate(episodes)
    assert batch.support_items.shape == (4, 3) and batch.query_items.shape == (4, 4)
    assert batch.users.dtype == torch.int64
    assert batch.support_items.dtype == torch.int64 and batch.query_items.dtype == torch.int64
    for name in ("support_ratings", "support_mask", "query_ratings", "query_mask"):
        assert getattr(batch, name).dtype == torch.float32
    check_batch_holds(batch, episodes)
    assert batch.support_mask.sum(1).tolist() == [3.0, 1.0, 0.0, 2.0]
    assert batch.query_mask.sum(1).tolist() == [1.0, 4.0, 2.0, 3.0]


def test_collate_real_episodes(toyshop):
    eps = make_episodes(toyshop.interactions, np.arange(40), k_support=5, n_query=None)
    batch = collate(eps.episodes)
    check_batch_holds(batch, eps.episodes)
    assert batch.query_items.shape[1] == max(len(e.query_items) for e in eps.episodes)


def test_collate_rejects_an_empty_list():
    with pytest.raises(ValueError, match="at least one episode"):
        collate([])


def test_to_moves_every_tensor_and_keeps_values():
    batch = collate(ragged_episodes())
    on_meta = batch.to("meta")
    on_cpu = batch.to(torch.device("cpu"))
    assert isinstance(on_meta, EpisodeBatch) and len(on_meta) == len(batch)
    for name, value in vars(batch).items():
        moved = getattr(on_meta, name)
        assert moved.device.type == "meta", name
        assert moved.dtype == value.dtype and moved.shape == value.shape
        assert torch.equal(getattr(on_cpu, name), value)


@pytest.mark.parametrize(
    "index",
    [np.array([3, 1]), torch.tensor([3, 1]), slice(1, 3), np.array([False, True, False, True])],
    ids=["numpy", "torch", "slice", "mask"],
)
def test_select_takes_a_sub_batch_with_the_same_padding(index):
    episodes = ragged_episodes()
    batch = collate(episodes)
    chosen = list(range(4))[index] if isinstance(index, slice) else None
    if chosen is None:
        as_numpy = index.numpy() if isinstance(index, torch.Tensor) else index
        chosen = np.arange(4)[as_numpy].tolist()
    sub = batch.select(index)
    assert isinstance(sub, EpisodeBatch)
    assert sub.support_items.shape[1] == batch.support_items.shape[1]
    assert sub.query_items.shape[1] == batch.query_items.shape[1]
    check_batch_holds(sub, [episodes[t] for t in chosen])


def test_candidates_exclude_exactly_the_support_items():
    n_items = 11
    episodes = ragged_episodes()
    batch = collate(episodes)
    mask = candidate_mask(batch, n_items)
    assert mask.dtype == torch.bool and mask.shape == (4, n_items)
    for t, e in enumerate(episodes):
        cands = candidate_items(e, n_items)
        assert np.array_equal(np.flatnonzero(mask[t].numpy()), cands)
        assert set(cands.tolist()) == set(range(n_items)) - set(e.support_items.tolist())
    # item 0 is padding in rows 0, 2, 3 but a real support item only in row 1
    assert mask[:, 0].tolist() == [True, False, True, True]
    # the user with an empty support set may be recommended anything
    assert mask[2].all()


def test_candidates_on_real_batches_and_after_select(toyshop, real_episodes):
    episodes = real_episodes.episodes[:64]
    batch = collate(episodes)
    mask = candidate_mask(batch, toyshop.n_items)
    assert (mask.sum(1) == toyshop.n_items - 5).all()
    for t in (0, 13, 63):
        expected = candidate_items(episodes[t], toyshop.n_items)
        assert np.array_equal(np.flatnonzero(mask[t].numpy()), expected)
        # the query items are candidates: they are what the user is scored on
        assert mask[t, batch.query_items[t]].all()
    sub = batch.select(np.array([63, 13]))
    assert torch.equal(candidate_mask(sub, toyshop.n_items), mask[[63, 13]])
