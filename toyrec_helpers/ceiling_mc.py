"""The ToyShop generator's latent quantities and its posterior predictive by Monte Carlo.

Two jobs that belong together, the numerical core of :mod:`toyrec_helpers.ceiling`:

* :func:`toyshop_latents` replays the generator's random draws
  (:func:`toyrec_helpers.toyshop.generate_toyshop`, same seed, same order of draws) and
  returns the hidden quantities that :class:`~toyrec_helpers.toyshop.ToyShop` does not keep:
  each toy's quality, brand quality and popularity, each shopper's taste. The replay is
  checked against the generator's own latent scores, so a change of the generator is an
  error, never a silently wrong ceiling.
* :func:`sample_particles`, :func:`evaluate_draws`, :func:`support_log_likelihood` and
  :func:`predictive` compute, for shoppers with given attributes, the predictive law of the
  rating of every toy given the first K ratings and the fact that those toys were bought
  first, by self-normalised importance sampling from the generator's prior.

The selection model (how the generator decides what a shopper buys) is the generator's:
shopper ``u`` buys the ``n_u`` toys with the largest keys ``taste_ui + log_pop_i + G_ui``
(``G`` Gumbel, ``n_u`` independent of taste), and the purchase times do not depend on
taste (they depend on release and sign-up dates; here they are taken as exchangeable given
the set bought, so the K support toys come first with probability ``K! (n-K)! / n!``, and a
toy bought is after the first ``Q`` with probability ``(n - Q) / (n - K)``). The
probability that toy ``i`` is among the ``n`` bought is approximated by the
threshold (conditional Poisson) form ``1 - exp(-w_i * lam)`` with ``w_i = exp(taste_ui +
log_pop_i)`` and ``lam`` solving ``sum_i (1 - exp(-w_i * lam)) = n``; inclusions are then
independent given ``(taste, n)``.

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toyrec_helpers import toyshop as ts

THRESHOLDS = (1.5, 2.5, 3.5, 4.5)
RATING_VALUES = (1.0, 2.0, 3.0, 4.0, 5.0)


@dataclass(frozen=True)
class ToyShopLatents:
    """The generator's hidden quantities, in the generator's user and item order.

    Attributes
    ----------
    item_category, item_brand, item_age : numpy.ndarray
        int64 ``[items]``: indices into ``CATEGORIES``, ``BRANDS``, ``AGE_BANDS``.
    price_z : numpy.ndarray
        float64 ``[items]``: standardised log price.
    theme_weights : numpy.ndarray
        float64 ``[items, themes]``: ``1 / (number of themes)`` on each theme of the toy.
    item_effect : numpy.ndarray
        float64 ``[items]``: toy quality plus its brand's quality.
    log_popularity : numpy.ndarray
        float64 ``[items]``.
    user_age, user_region : numpy.ndarray
        int64 ``[users]``: observed shopper attributes (indices into ``AGE_BANDS``,
        ``REGIONS``).
    bias, price_sensitivity : numpy.ndarray
        float64 ``[users]``.
    category_taste, theme_taste, brand_love : numpy.ndarray
        float64 ``[users, categories]``, ``[users, themes]`` (favourite boosts included),
        ``[users, brands]``.
    scores : numpy.ndarray
        float64 ``[users, items]``: the latent scores, equal to ``ToyShop.scores``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    item_category: np.ndarray
    item_brand: np.ndarray
    item_age: np.ndarray
    price_z: np.ndarray
    theme_weights: np.ndarray
    item_effect: np.ndarray
    log_popularity: np.ndarray
    user_age: np.ndarray
    user_region: np.ndarray
    bias: np.ndarray
    price_sensitivity: np.ndarray
    category_taste: np.ndarray
    theme_taste: np.ndarray
    brand_love: np.ndarray
    scores: np.ndarray


def population_category_taste() -> np.ndarray:
    """Mean category taste by child age band, float64 ``[age bands, categories]``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    cat_age = np.array([ts.CATEGORIES[c][1] for c in ts.CATEGORIES]).T  # [age, cat]
    pop_cat = 0.35 * np.log(cat_age + 0.05)
    pop_cat -= pop_cat.mean(axis=1, keepdims=True)
    return pop_cat


def theme_weights_by_region() -> np.ndarray:
    """Probability weights of each favourite-theme draw, float64 ``[regions, themes]``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    index = {t: k for k, t in enumerate(ts.THEMES)}
    out = np.ones((len(ts.REGIONS), len(ts.THEMES)))
    for g, region in enumerate(ts.REGIONS):
        for t in ts.REGION_THEME_TILT[region]:
            out[g, index[t]] = 2.0
    return out / out.sum(axis=1, keepdims=True)


def toyshop_latents(config: ts.ToyShopConfig) -> ToyShopLatents:
    """Replay the generator's draws for ``config`` and return its hidden quantities.

    Parameters
    ----------
    config : ToyShopConfig

    Returns
    -------
    ToyShopLatents

    Raises
    ------
    RuntimeError
        If the replayed latent scores differ from ``generate_toyshop(config).scores`` (the
        generator changed and this replay was not updated with it).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    if not isinstance(config, ts.ToyShopConfig):
        raise TypeError(f"argument 'config': expected ToyShopConfig, "
                        f"got {type(config).__name__}")
    rng = np.random.default_rng(config.seed)
    n_u, n_i = config.users, config.items
    cat_names = list(ts.CATEGORIES)
    n_cat, n_theme, n_brand, n_age = (len(cat_names), len(ts.THEMES), len(ts.BRANDS),
                                      len(ts.AGE_BANDS))
    # items, draw for draw as in generate_toyshop
    cat_share = rng.dirichlet(np.full(n_cat, 8.0))
    item_cat = rng.choice(n_cat, size=n_i, p=cat_share)
    brand_home = np.zeros((n_brand, n_cat), dtype=bool)
    for b in range(n_brand):
        brand_home[b, rng.choice(n_cat, size=rng.integers(1, 4), replace=False)] = True
    for c in range(n_cat):
        if not brand_home[:, c].any():
            brand_home[rng.integers(n_brand), c] = True
    item_brand = np.array([rng.choice(np.flatnonzero(brand_home[:, c])) for c in item_cat])
    item_age = np.array(
        [rng.choice(n_age, p=np.array(ts.CATEGORIES[cat_names[c]][1])) for c in item_cat])
    median_price = np.array([ts.CATEGORIES[cat_names[c]][0] for c in item_cat])
    price = np.round(median_price * np.exp(rng.normal(0.0, 0.45, n_i)), 0) - 0.01
    price = np.maximum(price, 3.99)
    theme_index = {t: k for k, t in enumerate(ts.THEMES)}
    item_themes = []
    for c in item_cat:
        typical = [theme_index[t] for t in ts.CATEGORIES[cat_names[c]][2]]
        weights = np.full(n_theme, 0.15)
        weights[typical] = 2.0
        n_t = rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15])
        item_themes.append(
            sorted(rng.choice(n_theme, size=n_t, replace=False, p=weights / weights.sum())))
    rng.integers(0, (pd_days("2020-01-01", "2024-09-30")) + 1, size=n_i)  # release dates
    quality = rng.normal(0.0, ts.SIGMA_QUALITY, n_i)
    brand_quality = rng.normal(0.0, ts.SIGMA_BRAND, n_brand)
    log_pop = rng.normal(0.0, ts.SIGMA_POPULARITY, n_i) + 1.5 * quality
    for i in range(n_i):  # titles
        rng.integers(5)
        rng.integers(len(ts.CATEGORIES[cat_names[item_cat[i]]][3]))
        if len(item_themes[i]) > 1:
            rng.integers(5)
    # shoppers
    user_age = rng.choice(n_age, size=n_u, p=[0.2, 0.27, 0.25, 0.18, 0.10])
    user_region = rng.choice(len(ts.REGIONS), size=n_u)
    rng.integers(0, pd_days("2022-06-01", "2024-09-30") + 1, size=n_u)  # signup dates
    bias = rng.normal(0.0, ts.SIGMA_BIAS, n_u)
    cat_taste = population_category_taste()[user_age] + rng.normal(
        0.0, ts.SIGMA_CATEGORY, (n_u, n_cat))
    theme_taste = rng.normal(0.0, ts.SIGMA_THEME, (n_u, n_theme))
    fav_p = theme_weights_by_region()
    for u in range(n_u):
        fav = rng.choice(n_theme, size=2, replace=False, p=fav_p[user_region[u]])
        theme_taste[u, fav] += ts.FAVOURITE_BOOST
    price_z = (np.log(price) - np.log(price).mean()) / np.log(price).std()
    price_sens = rng.gamma(2.0, 0.15, n_u)
    brand_love = np.zeros((n_u, n_brand))
    for u in range(n_u):
        brand_love[u, rng.choice(n_brand, size=rng.integers(1, 3), replace=False)] = (
            ts.BRAND_LOVE)
    theme_onehot = np.zeros((n_i, n_theme))
    for i, themes in enumerate(item_themes):
        theme_onehot[i, themes] = 1.0 / len(themes)
    age_dist = np.abs(user_age[:, None] - item_age[None, :])
    taste = (cat_taste[:, item_cat] + theme_taste @ theme_onehot.T
             - np.array(ts.AGE_PENALTY)[age_dist]
             - price_sens[:, None] * price_z[None, :] + brand_love[:, item_brand])
    item_effect = quality + brand_quality[item_brand]
    scores = ts.MU + bias[:, None] + item_effect[None, :] + taste
    reference = ts.generate_toyshop(config).scores
    if reference.shape != scores.shape or not np.allclose(reference, scores, atol=1e-9):
        raise RuntimeError(f"replaying ToyShop generator version {ts.GENERATOR_VERSION} for "
                           f"{config} does not reproduce its latent scores; the generator "
                           "changed and toyrec_helpers.ceiling_mc must follow it")
    return ToyShopLatents(
        item_category=item_cat.astype(np.int64), item_brand=item_brand.astype(np.int64),
        item_age=item_age.astype(np.int64), price_z=price_z, theme_weights=theme_onehot,
        item_effect=item_effect, log_popularity=log_pop,
        user_age=user_age.astype(np.int64), user_region=user_region.astype(np.int64),
        bias=bias, price_sensitivity=price_sens, category_taste=cat_taste,
        theme_taste=theme_taste, brand_love=brand_love, scores=scores)


def pd_days(start: str, end: str) -> int:
    """Whole days between two ISO dates (the span the generator draws dates from).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    return int((np.datetime64(end, "D") - np.datetime64(start, "D")).astype(int))


# --------------------------------------------------------------------------- particles

N_CONT = 1 + len(ts.CATEGORIES) + len(ts.THEMES) + 1  # bias, categories, themes, price
PRIOR_SD = np.array([ts.SIGMA_BIAS] + [ts.SIGMA_CATEGORY] * len(ts.CATEGORIES)
                    + [ts.SIGMA_THEME] * len(ts.THEMES) + [np.sqrt(2.0) * 0.15])
_CAT = slice(1, 1 + len(ts.CATEGORIES))
_THEME = slice(_CAT.stop, _CAT.stop + len(ts.THEMES))


@dataclass(frozen=True)
class Particles:
    """Draws of shoppers' latents, leading dimensions ``[U, N]`` (shopper, draw).

    Attributes
    ----------
    cont : torch.Tensor
        float64 ``[U, N, N_CONT]``: bias, category tastes, theme tastes *before* the
        favourite boost, price sensitivity.
    fav : torch.Tensor
        int64 ``[U, N, 2]``: the two favourite themes, sorted.
    brands : torch.Tensor
        int64 ``[U, N, 2]``: loved brands, sorted; ``-1`` in the first slot when one brand.
    n_bought : torch.Tensor
        int64 ``[U, N]``: number of toys bought.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    cont: torch.Tensor
    fav: torch.Tensor
    brands: torch.Tensor
    n_bought: torch.Tensor

    def take(self, index: torch.Tensor) -> Particles:
        """Draws ``index`` (int64 ``[U, M]``) of each shopper."""
        def pick(t: torch.Tensor) -> torch.Tensor:
            idx = index.reshape(*index.shape, *([1] * (t.dim() - 2)))
            return torch.gather(t, 1, idx.expand(*index.shape, *t.shape[2:]))
        return Particles(*(pick(t) for t in (self.cont, self.fav, self.brands, self.n_bought)))

    def codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes of the favourite pair and of the loved-brand set, ``[U, N]``."""
        return (self.fav[..., 0] * len(ts.THEMES) + self.fav[..., 1],
                (self.brands[..., 0] + 1) * len(ts.BRANDS) + self.brands[..., 1])


def _discrete_prior(region: np.ndarray, shape: tuple[int, int], rng: np.random.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    u, n = shape
    keys = np.log(theme_weights_by_region()[region])[:, None, :] + rng.gumbel(
        size=(u, n, len(ts.THEMES)))
    fav = np.sort(np.argsort(-keys, axis=-1)[..., :2], axis=-1)
    order = np.argsort(rng.random((u, n, len(ts.BRANDS))), axis=-1)[..., :2]
    brands = np.where((rng.integers(1, 3, (u, n)) == 2)[..., None], order,
                      np.stack([np.full((u, n), -1), order[..., 0]], -1))
    return torch.as_tensor(fav), torch.as_tensor(np.sort(brands, axis=-1))


def sample_particles(config: ts.ToyShopConfig, age: np.ndarray, region: np.ndarray, n: int,
                     rng: np.random.Generator) -> Particles:
    """``n`` draws from the generator's prior for each shopper (age band, region).

    The laws are those of :func:`toyrec_helpers.toyshop.generate_toyshop`; draws without
    replacement with weights use the equivalent Gumbel-top-k form.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    u = len(age)
    cont = rng.normal(0.0, 1.0, (u, n, N_CONT)) * PRIOR_SD
    cont[..., _CAT] += population_category_taste()[age][:, None, :]
    cont[..., -1] = rng.gamma(2.0, 0.15, (u, n))
    fav, brands = _discrete_prior(region, (u, n), rng)
    extra_mean = config.ratings / config.users - ts.MIN_RATINGS
    extra = np.zeros((u, n), dtype=np.int64)
    if extra_mean > 0:
        log_scale = np.log(extra_mean) - ts.PER_USER_SIGMA**2 / 2
        extra = np.floor(rng.lognormal(log_scale, ts.PER_USER_SIGMA, (u, n))).astype(np.int64)
    n_bought = np.minimum(ts.MIN_RATINGS + extra, config.items // 2)
    return Particles(torch.as_tensor(cont), fav, brands, torch.as_tensor(n_bought))


def _log_fav_prior(region: np.ndarray, fav: torch.Tensor) -> torch.Tensor:
    p = torch.as_tensor(theme_weights_by_region()[region])[:, None, :].expand(
        *fav.shape[:2], -1)
    pi, pj = torch.gather(p, 2, fav[..., :1])[..., 0], torch.gather(p, 2, fav[..., 1:])[..., 0]
    return torch.log(pi * pj * (1.0 / (1.0 - pi) + 1.0 / (1.0 - pj)))


def _log_brand_prior(brands: torch.Tensor) -> torch.Tensor:
    n_b = len(ts.BRANDS)
    one, two = np.log(0.5 / n_b), np.log(0.5 * 2.0 / (n_b * (n_b - 1)))
    return torch.where(brands[..., 0] < 0, one, two).to(torch.float64)


def prior_log_density(p: Particles, age: np.ndarray, region: np.ndarray) -> torch.Tensor:
    """Log prior density of the draws (continuous part and favourite/brand choices; the
    number bought is left out), float64 ``[U, N]``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    mean = torch.zeros(len(age), 1, N_CONT, dtype=torch.float64)
    mean[:, 0, _CAT] = torch.as_tensor(population_category_taste()[age])
    sd = torch.as_tensor(PRIOR_SD)
    z = ((p.cont - mean) / sd)[..., :-1]
    gauss = (-0.5 * z**2 - torch.log(sd[:-1]) - 0.5 * np.log(2 * np.pi)).sum(-1)
    ps = p.cont[..., -1]
    gamma = torch.where(ps > 0, torch.log(ps.clamp_min(1e-300)) - ps / 0.15 - 2 * np.log(0.15),
                        -torch.inf)
    return gauss + gamma + _log_fav_prior(region, p.fav) + _log_brand_prior(p.brands)


# --------------------------------------------------------------------------- likelihood


def rating_probabilities(scores: torch.Tensor) -> torch.Tensor:
    """``P(r = 1..5 | s)`` for ``r = clip(round(s + eps), 1, 5)``, shape ``[..., 5]``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    z = torch.stack([(t - scores) / ts.SIGMA_NOISE for t in THRESHOLDS], -1)
    cdf = torch.special.ndtr(z)
    zero = torch.zeros_like(cdf[..., :1])
    return torch.diff(torch.cat([zero, cdf, zero + 1.0], -1), dim=-1).clamp_min(0.0)


def rating_log_likelihood(scores: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
    """``log P(r | s)`` elementwise, accurate far in the tails (float64 advised).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    r = ratings.round().clamp(1, 5)
    upper = torch.where(r >= 5, torch.full_like(r, torch.inf), r + 0.5)
    lower = torch.where(r <= 1, torch.full_like(r, -torch.inf), r - 0.5)
    a, b = (lower - scores) / ts.SIGMA_NOISE, (upper - scores) / ts.SIGMA_NOISE
    flip = (a + b) > 0  # use the lower tail: P = Phi(-a) - Phi(-b)
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    gap = (torch.special.log_ndtr(lo) - log_hi).clamp_max(-1e-300)
    return log_hi + torch.log(-torch.expm1(gap))


def evaluate_draws(items: dict[str, np.ndarray], age: np.ndarray, p: Particles,
             lam: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latent scores and log probabilities of being bought of every toy, for each draw.

    Parameters
    ----------
    items : dict of str to numpy.ndarray
        The item side: ``item_category``, ``item_brand``, ``item_age``, ``price_z``,
        ``theme_weights``, ``item_effect``, ``log_popularity`` (fields of
        :class:`ToyShopLatents`), rows in the order the toys are indexed.
    age : numpy.ndarray
        int64 ``[U]``: each shopper's age band.
    p : Particles
        ``[U, N]`` draws.
    lam : torch.Tensor, optional
        ``[U, N, 1]`` from an earlier call on the whole catalogue (then ``items`` may be a
        subset of the catalogue); computed when absent.

    Returns
    -------
    scores, log_include : torch.Tensor
        float32 ``[U, N, items]``. Inclusion uses the threshold form of the generator's
        Gumbel top-``n`` choice (module docstring).
    lam : torch.Tensor
        ``[U, N, 1]``, relative to :data:`LOG_W_SHIFT`.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    c = p.cont.to(torch.float32)
    theme = c[..., _THEME].clone()
    theme.scatter_add_(-1, p.fav, torch.full(p.fav.shape, ts.FAVOURITE_BOOST))
    love = torch.zeros(*p.brands.shape[:2], len(ts.BRANDS) + 1)
    love.scatter_(-1, p.brands + 1, ts.BRAND_LOVE)
    age_pen = torch.as_tensor(np.array(ts.AGE_PENALTY)[np.abs(age[:, None] - items["item_age"])],
                              dtype=torch.float32)
    taste = (c[..., _CAT][..., torch.as_tensor(items["item_category"])]
             + theme @ torch.as_tensor(items["theme_weights"], dtype=torch.float32).T
             - age_pen[:, None, :]
             - c[..., -1:] * torch.as_tensor(items["price_z"], dtype=torch.float32)
             + love[..., torch.as_tensor(items["item_brand"]) + 1])
    effect = torch.as_tensor(items["item_effect"], dtype=torch.float32)
    scores = ts.MU + c[..., :1] + effect + taste
    w = torch.exp(taste + torch.as_tensor(items["log_popularity"], dtype=torch.float32)
                  - LOG_W_SHIFT)
    if lam is None:
        lam = solve_lambda(w, p.n_bought)
    return scores, torch.log(-torch.expm1(-w * lam)), lam


LOG_W_SHIFT = 4.0
"""``w = exp(taste + log_popularity - LOG_W_SHIFT)``: keeps ``w`` in float32 range."""


def solve_lambda(w: torch.Tensor, n_bought: torch.Tensor, iterations: int = 100
                 ) -> torch.Tensor:
    """``lam`` with ``sum_i (1 - exp(-w_i lam)) = n``: toy ``i`` is bought with probability
    ``1 - exp(-w_i lam)`` under the threshold approximation.

    Newton's method converges monotonically from the lower bound ``n / sum_i w_i``.

    Parameters
    ----------
    w : torch.Tensor
        ``[..., items]``: ``exp(taste + log_popularity - LOG_W_SHIFT)``.
    n_bought : torch.Tensor
        ``[...]``: number of toys bought.
    iterations : int
        Most Newton steps.

    Returns
    -------
    torch.Tensor
        ``[..., 1]``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    n = n_bought.to(w.dtype)[..., None]
    lam = n / w.sum(dim=-1, keepdim=True)
    for _ in range(iterations):
        e = torch.exp(-w * lam)
        f = (1.0 - e).sum(dim=-1, keepdim=True) - n
        lam = lam - f / (w * e).sum(dim=-1, keepdim=True)
        if bool((f.abs() < 1e-4 * n).all()):
            break
    return lam


def support_log_likelihood(scores: torch.Tensor, log_include: torch.Tensor,
                           n_bought: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor,
                           mask: torch.Tensor) -> torch.Tensor:
    """``log P(the support toys are the first K bought, their ratings | draw)``, float64
    ``[U, N]`` (up to a constant).

    Each support toy is bought (``log_include``), and among the ``n`` toys bought these
    ``K`` come first in time: probability ``(n - K)! K! / n!`` when purchase times are
    exchangeable given the set. ``scores``, ``log_include`` are ``[U or 1, N, toys]``,
    ``n_bought`` ``[U or 1, N]``; ``items``, ``ratings``, ``mask`` are ``[U, K]``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    idx = items[:, None, :].expand(items.shape[0], scores.shape[1], -1)
    s = torch.gather(scores.expand(items.shape[0], -1, -1), 2, idx).to(torch.float64)
    li = torch.gather(log_include.expand(items.shape[0], -1, -1), 2, idx).to(torch.float64)
    r = ratings.to(torch.float64)[:, None, :].expand_as(s)
    m = mask.to(torch.float64)
    n = n_bought.to(torch.float64).expand(items.shape[0], -1)
    k = m.sum(1, keepdim=True)
    first = torch.lgamma(n - k + 1.0) - torch.lgamma(n + 1.0)
    return ((rating_log_likelihood(s, r) + li) * m[:, None, :]).sum(-1) + first


# --------------------------------------------------------------------------- predictive


def predictive(items: dict[str, np.ndarray], age: np.ndarray, p: Particles,
               log_weights: torch.Tensor, support_mask: torch.Tensor, query_after: int
               ) -> dict[str, torch.Tensor]:
    """The predictive law of every toy's rating given that it is bought after the first
    ``query_after`` purchases, from weighted draws ``[U, N]``.

    Each draw is weighted by its probability of that event: ``P(toy bought | draw)`` times
    ``(n - max(K, query_after)) / (n - K)`` (purchase times exchangeable given the set).

    Returns
    -------
    dict of str to torch.Tensor
        ``dist`` float64 ``[U, items, 5]``; ``mean``, ``median`` and ``se`` (delta-method
        standard error of the mean over these draws) ``[U, items]``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    scores, log_include, _ = evaluate_draws(items, age, p)
    k = support_mask.to(torch.float64).sum(1, keepdim=True)
    n = p.n_bought.to(torch.float64)
    after = k.clamp_min(float(query_after))
    v = torch.softmax(log_weights, 1) * (n - after).clamp_min(0.0) / (n - k).clamp_min(1.0)
    a = v[..., None].to(torch.float32) * torch.exp(log_include)  # [U, N, I]
    probs = rating_probabilities(scores)  # [U, N, I, 5]
    den = a.sum(1).to(torch.float64).clamp_min(1e-300)
    dist = (a[..., None] * probs).sum(1).to(torch.float64) / den[..., None]
    values = torch.tensor(RATING_VALUES, dtype=torch.float64)
    mean = dist @ values
    e = probs @ values.to(torch.float32)
    var = ((a**2) * (e - mean[:, None, :].to(torch.float32)) ** 2).sum(1).to(torch.float64)
    median = 1.0 + (dist.cumsum(-1) < 0.5).sum(-1).clamp_max(4).to(torch.float64)
    return {"dist": dist, "mean": mean, "median": median, "se": var.sqrt() / den}


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """``1 / sum(w^2)`` of self-normalised weights, per row of ``[U, N]`` log weights.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    return 1.0 / (torch.softmax(log_weights, 1) ** 2).sum(1)
