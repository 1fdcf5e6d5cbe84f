"""check() of toyrec_helpers.exercises: right for each exercise's reference solution (computed
here the way the chapter's solution cell computes it), wrong with a hint for a wrong answer,
and the module's source does not show the answers."""

import inspect

import numpy as np
import pandas as pd
import pytest
import torch

from toyrec_helpers import exercises
from toyrec_helpers.bias_model import fit_bias_model
from toyrec_helpers.data import load_dataset
from toyrec_helpers.distributed import shard
from toyrec_helpers.episodes import collate, make_episodes, split_users
from toyrec_helpers.toyshop import answer_key


@pytest.fixture(scope="module")
def shop():
    return load_dataset()


@pytest.fixture(scope="module")
def chapter1(shop):
    """The quantities of chapter 1's solution cells (its cells 19 to 35, seed 0)."""
    inter = shop.interactions
    per_user = shop.ratings_per_user()
    rng = np.random.default_rng(0)
    users = inter["user"].to_numpy()
    items = inter["item"].to_numpy()
    ratings = inter["rating"].to_numpy().astype(np.float64)
    is_new = np.zeros(shop.n_users, dtype=bool)
    is_new[rng.permutation(shop.n_users)[: shop.n_users // 5]] = True
    position = inter.groupby("user").cumcount().to_numpy()
    last10 = position >= per_user[users] - 10
    train = ~is_new[users] & ~last10
    model = fit_bias_model(users[train], items[train], ratings[train], shop.n_users,
                           shop.n_items, reg_user=5.0, reg_item=5.0)
    mu = ratings[train].mean()
    new = is_new[users] & last10
    first5 = is_new[users] & (position < 5)

    def mae_per_shopper(pred, select):
        return pd.Series(np.abs(pred[select] - ratings[select])).groupby(users[select]).mean()

    def mae_with_ridge(lam_u):
        b_u = np.bincount(users[first5], ratings[first5] - mu - model.item_bias[items[first5]],
                          minlength=shop.n_users) / (lam_u + 5)
        return mae_per_shopper(mu + b_u[users] + model.item_bias[items], new).mean()

    pred_model = model.predict(users, items)
    per_item = np.bincount(inter["item"], minlength=shop.n_items)
    top = np.argsort(-per_item)[:10]
    return {
        "mae_raw": mae_with_ridge(0.0),
        "mae_adapted": mae_with_ridge(5.0),
        "pooled": np.abs(pred_model[new] - ratings[new]).mean(),
        "observed": inter.groupby("item")["rating"].mean().reindex(top).mean(),
        "expected_all": answer_key(shop)[:, top].mean(),
        "expected_random10": answer_key(shop)[:, :10].mean(),
    }


def test_every_exercise_label_exists_in_a_chapter():
    from pathlib import Path

    book = Path(__file__).resolve().parent.parent / "book"
    text = "".join(p.read_text(encoding="utf-8") for p in book.glob("*.ipynb"))
    for exercise_id in exercises.exercises():
        assert f":label: {exercise_id}" in text, exercise_id


def test_ch1_reg(chapter1, capsys):
    assert exercises.check("ch1-ex-reg", chapter1["mae_raw"])
    assert "right" in capsys.readouterr().out
    assert exercises.check("ch1-ex-reg", np.float64(chapter1["mae_raw"]), quiet=True)
    assert not exercises.check("ch1-ex-reg", chapter1["mae_adapted"])  # lambda_u = 5 again
    out = capsys.readouterr().out
    assert "not yet" in out and "Hint" in out and f"{chapter1['mae_raw']:.3f}" not in out


def test_ch1_weighted(chapter1):
    assert exercises.check("ch1-ex-weighted", chapter1["pooled"], quiet=True)
    assert not exercises.check("ch1-ex-weighted", chapter1["pooled"] + 0.01, quiet=True)


def test_ch1_popular(chapter1):
    answer = (chapter1["observed"], chapter1["expected_all"])
    assert exercises.check("ch1-ex-popular", answer, quiet=True)
    assert exercises.check("ch1-ex-popular", np.array(answer), quiet=True)
    wrong = (chapter1["observed"], chapter1["expected_random10"])
    assert not exercises.check("ch1-ex-popular", wrong, quiet=True)
    assert not exercises.check("ch1-ex-popular", answer[::-1], quiet=True)


def test_ch2_k(shop):
    split = split_users(shop.n_users, fractions=(0.7, 0.1, 0.2), seed=0)
    ten_shot = make_episodes(shop.interactions, split.test, k_support=10, n_query=10)
    assert exercises.check("ch2-ex-k", ten_shot.n_skipped, quiet=True)
    assert exercises.check("ch2-ex-k", np.int64(ten_shot.n_skipped), quiet=True)
    per_user = shop.ratings_per_user()
    wrong = int((per_user[split.test] < 10).sum())  # K alone, forgetting the query
    assert wrong != ten_shot.n_skipped
    assert not exercises.check("ch2-ex-k", wrong, quiet=True)


def test_ch2_mask(shop):
    def masked_mean(ratings, mask):
        return (ratings * mask).sum(1) / mask.sum(1)

    def plain_mean(ratings, mask):
        return ratings.mean(dim=1)

    assert exercises.check("ch2-ex-mask", masked_mean, quiet=True)
    assert not exercises.check("ch2-ex-mask", plain_mean, quiet=True)
    # the reference agrees with the chapter's batch: the plain mean differs on padded tasks
    split = split_users(shop.n_users, fractions=(0.7, 0.1, 0.2), seed=0)
    batch = collate(make_episodes(shop.interactions, split.test[:4], 5, None).episodes)
    full = batch.query_mask.sum(1) == batch.query_mask.shape[1]
    assert not torch.allclose(masked_mean(batch.query_ratings, batch.query_mask)[~full],
                              plain_mean(batch.query_ratings, batch.query_mask)[~full])


def test_ch4_bias():
    alpha, steps = 0.01, 5
    b, e_bar = 0.0, 1.0  # the solution's plain loop on a bias-only model, residual 1
    for _ in range(steps):
        b += 2 * alpha * (e_bar - b)
    alpha_90 = (1 - 0.1 ** (1 / 5)) / 2
    assert exercises.check("ch4-ex-bias", (b, alpha_90), quiet=True)
    assert not exercises.check("ch4-ex-bias", (alpha * steps, alpha_90), quiet=True)
    assert not exercises.check("ch4-ex-bias", (b, 0.1), quiet=True)


def test_ch10_shares(shop):
    split = split_users(shop.n_users, fractions=(0.7, 0.1, 0.2), seed=0)
    batch = collate(make_episodes(shop.interactions, split.train[:32], 5, 10).episodes)
    assert len(batch) == 32
    ranks = [shard(batch, r, 3) for r in range(3)]
    users = batch.users.tolist()
    slices = [[users.index(u) for u in part.users.tolist()] for part in ranks]
    assert exercises.check("ch10-ex-shares", slices, quiet=True)
    assert exercises.check("ch10-ex-shares", [range(0, 10), range(10, 21), range(21, 32)],
                           quiet=True)
    assert exercises.check("ch10-ex-shares", [slice(0, 10), slice(10, 21), slice(21, 32)],
                           quiet=True)
    assert not exercises.check("ch10-ex-shares", [range(0, 11), range(11, 22), range(22, 32)],
                               quiet=True)


def test_wrong_forms_get_the_expected_form_not_an_error(capsys):
    assert not exercises.check("ch1-ex-reg", "0.95")
    assert "expected one number" in capsys.readouterr().out
    assert not exercises.check("ch1-ex-popular", 3.5)
    assert not exercises.check("ch2-ex-k", 93.0)
    assert not exercises.check("ch2-ex-k", True)
    assert not exercises.check("ch2-ex-mask", 3)
    assert not exercises.check("ch2-ex-mask", lambda r, m: 1 / 0)
    assert not exercises.check("ch10-ex-shares", 3)
    with pytest.raises(KeyError, match="ch4-ex-nothing"):
        exercises.check("ch4-ex-nothing", 1)


def test_the_source_does_not_show_the_answers(chapter1):
    source = inspect.getsource(exercises)
    for value in (chapter1["mae_raw"], chapter1["pooled"], chapter1["observed"],
                  chapter1["expected_all"], 1 - 0.98**5, (1 - 0.1 ** (1 / 5)) / 2):
        assert f"{value:.3f}" not in source and f"{value:.2f}" not in source, value
    assert "93" not in source and "range(21, 32)" not in source
