"""The ToyShop: a synthetic toy shop with a known answer key.

The generative model is written out, with its equations, in ``data/toyshop/README.md``
(the datasheet). In short, shopper ``u`` has a latent score for toy ``i``

.. math::

    s_{ui} = \\mu + b_u + q_i + g_{\\mathrm{brand}(i)} + c_{u,\\mathrm{cat}(i)}
             + \\bar\\theta_{u,i} + f(\\mathrm{age}_u, \\mathrm{age}_i)
             - \\beta_u z_i + a_{u,\\mathrm{brand}(i)},

rates ``r_{ui} = clip(round(s_{ui} + eps), 1, 5)`` with ``eps ~ N(0, sigma^2)``, and buys
(hence rates) toys with probability increasing in its taste and the toy's popularity,
so ratings are missing not at random. The expected rating
``E[r_ui] = 1 + sum_{t in {1.5, 2.5, 3.5, 4.5}} Phi((s_ui - t) / sigma)`` is the answer key.

Everything is drawn from one seeded generator, so the same arguments always give the same
bytes. Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from toyrec_helpers.fileio import atomic_write_dir
from toyrec_helpers.toyshop_vocab import (
    AGE_BANDS,
    BRANDS,
    CATEGORIES,
    REGION_THEME_TILT,
    REGIONS,
    THEME_WORDS,
    THEMES,
)

GENERATOR_VERSION = 1

WINDOW_START = pd.Timestamp("2023-01-01")
WINDOW_END = pd.Timestamp("2024-12-31 23:59:59")


@dataclass(frozen=True)
class ToyShopConfig:
    """Parameters of the ToyShop generator; the defaults give the committed ``data/toyshop``.

    The difficulty constants (noise, taste spread, ...) are fixed by the datasheet and are
    deliberately not arguments: methods are compared on a shop whose difficulty was set
    before any method was tried.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """

    seed: int = 0
    users: int = 3000
    items: int = 600
    ratings: int = 100_000

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        if self.users < 3:
            raise ValueError(f"users must be at least 3, got {self.users}")
        if self.items < 40:
            raise ValueError(f"items must be at least 40, got {self.items}")
        if self.ratings < 15 * self.users:
            raise ValueError(
                f"ratings must be at least 15 per user ({15 * self.users}), got {self.ratings}"
            )
        if self.ratings > 0.5 * self.users * self.items:
            raise ValueError(
                f"ratings ({self.ratings}) must be at most half of users x items "
                f"({self.users * self.items // 2}) so that shoppers choose what they rate"
            )


# The datasheet's constants (data/toyshop/README.md, "Generative model").
MU = 3.35  # overall level of the latent score
SIGMA_NOISE = 0.75  # rating noise
SIGMA_BIAS = 0.45  # lenient and harsh raters
SIGMA_QUALITY = 0.30  # item quality
SIGMA_BRAND = 0.15  # brand quality
SIGMA_CATEGORY = 0.65  # individual category taste
SIGMA_THEME = 0.30  # individual taste for every theme
FAVOURITE_BOOST = 1.00  # taste for each of a shopper's two favourite themes
BRAND_LOVE = 0.50  # affinity for each of a shopper's one or two favourite brands
AGE_PENALTY = (0.0, 0.7, 1.5, 2.2, 2.8)  # by distance between child and toy age bands
CHOICE_TEMPERATURE = 1.0  # how strongly taste drives what a shopper buys
SIGMA_POPULARITY = 1.1  # log-popularity spread (long tail)
MIN_RATINGS = 15
PER_USER_SIGMA = 0.9  # spread of log(ratings per shopper above the minimum)


@dataclass(frozen=True)
class ToyShop:
    """A generated shop: the three tables, its schema, and the hidden quantities.

    Attributes
    ----------
    config : ToyShopConfig
    users, items, ratings : pandas.DataFrame
        The tables as written to CSV.
    scores : numpy.ndarray
        float64 ``[users, items]``, the latent scores ``s_ui``.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """

    config: ToyShopConfig
    users: pd.DataFrame
    items: pd.DataFrame
    ratings: pd.DataFrame
    scores: np.ndarray

    def expected_ratings(self) -> np.ndarray:
        """The answer key: ``E[r_ui]`` for every shopper and toy, float32 ``[users, items]``.

        Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
        """
        return expected_rating(self.scores)

    def schema(self) -> dict[str, object]:
        """The ``schema.json`` content, including the generator block that makes the
        answer key recomputable."""
        return {
            "format_version": 1,
            "name": "ToyShop",
            "rating_scale": {"min": 1, "max": 5, "integer": True},
            "users": {"file": "users.csv", "id": "user_id", "columns": {
                "child_age_band": {"kind": "categorical"}, "region": {"kind": "categorical"},
                "signup_date": {"kind": "date"},
            }},
            "items": {"file": "items.csv", "id": "item_id", "title": "title", "columns": {
                "category": {"kind": "categorical"}, "brand": {"kind": "categorical"},
                "age_band": {"kind": "categorical"}, "price": {"kind": "numeric"},
                "themes": {"kind": "multi", "separator": "|"}, "release_date": {"kind": "date"},
            }},
            "ratings": {"file": "ratings.csv", "user": "user_id", "item": "item_id",
                        "rating": "rating", "timestamp": "timestamp"},
            "generator": {"name": "toyshop", "version": GENERATOR_VERSION, **asdict(self.config)},
        }


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return torch.special.ndtr(torch.as_tensor(x, dtype=torch.float64)).numpy()


def expected_rating(scores: np.ndarray) -> np.ndarray:
    """``E[clip(round(s + eps), 1, 5)]`` for ``eps ~ N(0, SIGMA_NOISE^2)``, elementwise.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    out = np.ones(np.shape(scores), dtype=np.float64)
    for threshold in (1.5, 2.5, 3.5, 4.5):
        out += _normal_cdf((np.asarray(scores) - threshold) / SIGMA_NOISE)
    return out.astype(np.float32)


def _dates(rng: np.random.Generator, lo: pd.Timestamp, hi: pd.Timestamp, n: int) -> pd.Series:
    days = rng.integers(0, (hi - lo).days + 1, size=n)
    return pd.Series(lo + pd.to_timedelta(days, unit="D"))


def generate_toyshop(config: ToyShopConfig | None = None) -> ToyShop:
    """Generate the ToyShop (deterministic for a given config).

    Parameters
    ----------
    config : ToyShopConfig, optional
        Seed and sizes; the defaults give the committed data set.

    Returns
    -------
    ToyShop

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    cfg = config or ToyShopConfig()
    rng = np.random.default_rng(cfg.seed)
    n_u, n_i = cfg.users, cfg.items
    cat_names = list(CATEGORIES)
    n_cat, n_theme, n_brand, n_age = len(cat_names), len(THEMES), len(BRANDS), len(AGE_BANDS)

    # --- items -----------------------------------------------------------------------
    cat_share = rng.dirichlet(np.full(n_cat, 8.0))
    item_cat = rng.choice(n_cat, size=n_i, p=cat_share)
    brand_home = np.zeros((n_brand, n_cat), dtype=bool)  # each brand makes 1-3 categories
    for b in range(n_brand):
        brand_home[b, rng.choice(n_cat, size=rng.integers(1, 4), replace=False)] = True
    for c in range(n_cat):  # every category has at least one brand
        if not brand_home[:, c].any():
            brand_home[rng.integers(n_brand), c] = True
    item_brand = np.array([rng.choice(np.flatnonzero(brand_home[:, c])) for c in item_cat])
    item_age = np.array(
        [rng.choice(n_age, p=np.array(CATEGORIES[cat_names[c]][1])) for c in item_cat]
    )
    median_price = np.array([CATEGORIES[cat_names[c]][0] for c in item_cat])
    price = np.round(median_price * np.exp(rng.normal(0.0, 0.45, n_i)), 0) - 0.01
    price = np.maximum(price, 3.99)
    theme_index = {t: k for k, t in enumerate(THEMES)}
    item_themes: list[list[int]] = []
    for c in item_cat:
        typical = [theme_index[t] for t in CATEGORIES[cat_names[c]][2]]
        weights = np.full(n_theme, 0.15)
        weights[typical] = 2.0
        n_t = rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15])
        item_themes.append(
            sorted(rng.choice(n_theme, size=n_t, replace=False, p=weights / weights.sum()))
        )
    release = _dates(rng, pd.Timestamp("2020-01-01"), pd.Timestamp("2024-09-30"), n_i)
    quality = rng.normal(0.0, SIGMA_QUALITY, n_i)
    brand_quality = rng.normal(0.0, SIGMA_BRAND, n_brand)
    log_pop = rng.normal(0.0, SIGMA_POPULARITY, n_i) + 1.5 * quality

    titles, seen = [], set()
    for i in range(n_i):
        first = THEME_WORDS[THEMES[item_themes[i][0]]][rng.integers(5)]
        noun = CATEGORIES[cat_names[item_cat[i]]][3][
            rng.integers(len(CATEGORIES[cat_names[item_cat[i]]][3]))
        ]
        second = ""
        if len(item_themes[i]) > 1:
            second = " " + THEME_WORDS[THEMES[item_themes[i][1]]][rng.integers(5)]
        title = f"{first}{second} {noun}"
        k = 2
        while title in seen:
            title = f"{first}{second} {noun} {k}"
            k += 1
        seen.add(title)
        titles.append(title)
    items = pd.DataFrame(
        {
            "item_id": [f"T{i + 1:04d}" for i in range(n_i)],
            "title": titles,
            "category": [cat_names[c] for c in item_cat],
            "brand": [BRANDS[b] for b in item_brand],
            "age_band": [AGE_BANDS[a] for a in item_age],
            "price": [f"{p:.2f}" for p in price],
            "themes": ["|".join(THEMES[t] for t in ts) for ts in item_themes],
            "release_date": release.dt.strftime("%Y-%m-%d"),
        }
    )

    # --- shoppers --------------------------------------------------------------------
    user_age = rng.choice(n_age, size=n_u, p=[0.2, 0.27, 0.25, 0.18, 0.10])
    user_region = rng.choice(len(REGIONS), size=n_u)
    signup = _dates(rng, pd.Timestamp("2022-06-01"), pd.Timestamp("2024-09-30"), n_u)
    bias = rng.normal(0.0, SIGMA_BIAS, n_u)
    # population category taste by age band: log of how common the category is at that age
    cat_age = np.array([CATEGORIES[c][1] for c in cat_names]).T  # [age, cat]
    pop_cat = 0.35 * np.log(cat_age + 0.05)
    pop_cat -= pop_cat.mean(axis=1, keepdims=True)
    cat_taste = pop_cat[user_age] + rng.normal(0.0, SIGMA_CATEGORY, (n_u, n_cat))
    theme_taste = rng.normal(0.0, SIGMA_THEME, (n_u, n_theme))
    for u in range(n_u):
        weights = np.ones(n_theme)
        for t in REGION_THEME_TILT[REGIONS[user_region[u]]]:
            weights[theme_index[t]] = 2.0
        fav = rng.choice(n_theme, size=2, replace=False, p=weights / weights.sum())
        theme_taste[u, fav] += FAVOURITE_BOOST
    price_z = (np.log(price) - np.log(price).mean()) / np.log(price).std()
    price_sens = rng.gamma(2.0, 0.15, n_u)
    brand_love = np.zeros((n_u, n_brand))
    for u in range(n_u):
        brand_love[u, rng.choice(n_brand, size=rng.integers(1, 3), replace=False)] = BRAND_LOVE

    # --- latent scores [users, items] --------------------------------------------------
    theme_onehot = np.zeros((n_i, n_theme))
    for i, ts in enumerate(item_themes):
        theme_onehot[i, ts] = 1.0 / len(ts)
    age_dist = np.abs(user_age[:, None] - item_age[None, :])
    taste = (
        cat_taste[:, item_cat]
        + theme_taste @ theme_onehot.T
        - np.array(AGE_PENALTY)[age_dist]
        - price_sens[:, None] * price_z[None, :]
        + brand_love[:, item_brand]
    )
    scores = MU + bias[:, None] + (quality + brand_quality[item_brand])[None, :] + taste

    # --- what each shopper buys and rates (missing not at random) -----------------------
    extra_mean = cfg.ratings / n_u - MIN_RATINGS
    log_scale = np.log(max(extra_mean, 1e-9)) - PER_USER_SIGMA**2 / 2
    extra = rng.lognormal(log_scale, PER_USER_SIGMA, n_u) if extra_mean > 0 else np.zeros(n_u)
    n_rated = MIN_RATINGS + np.floor(extra).astype(int)
    n_rated = np.minimum(n_rated, n_i // 2)
    keys = CHOICE_TEMPERATURE * taste + log_pop[None, :] + rng.gumbel(size=(n_u, n_i))
    order = np.argsort(-keys, axis=1, kind="stable")
    noise = rng.normal(0.0, SIGMA_NOISE, (n_u, n_i))
    rows, cols = [], []
    for u in range(n_u):
        chosen = np.sort(order[u, : n_rated[u]])
        rows.append(np.full(len(chosen), u))
        cols.append(chosen)
    r_u, r_i = np.concatenate(rows), np.concatenate(cols)
    rating = np.clip(np.round(scores[r_u, r_i] + noise[r_u, r_i]), 1, 5).astype(int)

    # timestamps: after the shopper signed up, after the toy's release, inside the window
    start = np.maximum(signup.to_numpy()[r_u], release.to_numpy()[r_i])
    start = np.maximum(start, np.datetime64(WINDOW_START))
    span = (np.datetime64(WINDOW_END) - start) / np.timedelta64(1, "s")
    stamp = start + (rng.random(len(r_u)) * span).astype("timedelta64[s]")
    ratings = pd.DataFrame(
        {
            "user_id": [f"U{u + 1:05d}" for u in r_u],
            "item_id": items["item_id"].to_numpy()[r_i],
            "rating": rating,
            "timestamp": pd.Series(stamp).dt.strftime("%Y-%m-%dT%H:%M:%S"),
            "_order": stamp,
        }
    )
    ratings = ratings.sort_values(["_order", "user_id"], kind="stable").drop(columns="_order")
    ratings = ratings.reset_index(drop=True)
    users = pd.DataFrame(
        {
            "user_id": [f"U{u + 1:05d}" for u in range(n_u)],
            "child_age_band": [AGE_BANDS[a] for a in user_age],
            "region": [REGIONS[r] for r in user_region],
            "signup_date": signup.dt.strftime("%Y-%m-%d"),
        }
    )
    return ToyShop(config=cfg, users=users, items=items, ratings=ratings, scores=scores)


@functools.lru_cache(maxsize=2)
def _generate_cached(config: ToyShopConfig) -> ToyShop:
    return generate_toyshop(config)


def write_toyshop(shop: ToyShop, out: str | Path, overwrite: bool = False) -> Path:
    """Write a generated shop as a data directory (atomically: a temporary directory is
    filled, then renamed).

    Parameters
    ----------
    shop : ToyShop
    out : str or Path
        Target directory. It must not exist unless ``overwrite`` is true, and even then it
        must look like a data directory this function wrote (it holds ``schema.json`` with
        a ``generator`` block): nothing the user owns is overwritten.
    overwrite : bool

    Returns
    -------
    Path
        ``out``.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out}: already exists; pass overwrite=True (--overwrite)")
        if not _is_generated_dir(out):
            raise FileExistsError(
                f"{out}: exists and is not a generated ToyShop directory; refusing to replace it"
            )

    def fill(tmp: Path) -> None:
        for name, frame in (("items", shop.items), ("users", shop.users),
                            ("ratings", shop.ratings)):
            frame.to_csv(tmp / f"{name}.csv", index=False, lineterminator="\n", encoding="utf-8")
        (tmp / "schema.json").write_text(json.dumps(shop.schema(), indent=2) + "\n",
                                         encoding="utf-8")
        if DATASHEET.is_file():
            (tmp / "README.md").write_text(DATASHEET.read_text(encoding="utf-8"),
                                           encoding="utf-8")

    return atomic_write_dir(out, fill)


DATASHEET = Path(__file__).resolve().parent / "toyshop_datasheet.md"


def _is_generated_dir(path: Path) -> bool:
    try:
        schema = json.loads((path / "schema.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(schema, dict) and isinstance(schema.get("generator"), dict)


def config_from_schema(raw_schema: dict[str, object]) -> ToyShopConfig | None:
    """The generator config recorded in a ``schema.json``, or ``None`` if the data set was
    not made by the ToyShop generator (then it has no answer key).

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    gen = raw_schema.get("generator")
    if not isinstance(gen, dict) or gen.get("name") != "toyshop":
        return None
    if gen.get("version") != GENERATOR_VERSION:
        raise ValueError(
            f"schema.json was written by ToyShop generator version {gen.get('version')}, "
            f"this package has version {GENERATOR_VERSION}"
        )
    return ToyShopConfig(
        seed=int(gen["seed"]), users=int(gen["users"]), items=int(gen["items"]),
        ratings=int(gen["ratings"]),
    )  # fmt: skip


def answer_key(dataset: object) -> np.ndarray:
    """The expected rating of every user for every item, aligned with a loaded data set.

    Parameters
    ----------
    dataset : toyrec_helpers.data.Dataset
        A ToyShop data set (its ``schema.json`` has a ``generator`` block).

    Returns
    -------
    numpy.ndarray
        float32 ``[n_users, n_items]`` in the data set's row order.

    Raises
    ------
    ValueError
        If the data set has no answer key, or its ratings differ from what the recorded
        generator settings produce (the files were edited).

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    schema = dataset.schema  # type: ignore[attr-defined]
    cfg = config_from_schema(schema.raw)
    if cfg is None:
        raise ValueError(f"{dataset.path}: not generated by the ToyShop generator; no answer key")  # type: ignore[attr-defined]
    shop = _generate_cached(cfg)
    ratings = dataset.ratings  # type: ignore[attr-defined]
    rs = schema.ratings
    same = len(ratings) == len(shop.ratings) and all(
        (ratings[col].astype(str).to_numpy() == shop.ratings[ref].astype(str).to_numpy()).all()
        for col, ref in ((rs.user, "user_id"), (rs.item, "item_id"))
    )
    same = same and bool((ratings[rs.rating].to_numpy() == shop.ratings["rating"].to_numpy()).all())
    if same and rs.timestamp is not None and rs.timestamp in ratings.columns:
        stamps = pd.to_datetime(shop.ratings["timestamp"], format="ISO8601").to_numpy()
        same = bool((ratings[rs.timestamp].to_numpy() == stamps).all())
    if not same:
        raise ValueError(
            f"{dataset.path}: ratings differ from what generator settings {cfg} produce; "  # type: ignore[attr-defined]
            "the answer key does not apply to edited files"
        )
    key = shop.expected_ratings()
    u = pd.Index(shop.users["user_id"]).get_indexer(dataset.users[schema.users.id])  # type: ignore[attr-defined]
    i = pd.Index(shop.items["item_id"]).get_indexer(dataset.items[schema.items.id])  # type: ignore[attr-defined]
    return key[np.ix_(u, i)]


def file_sha256(directory: str | Path) -> dict[str, str]:
    """SHA-256 of each data file in a directory (``*.csv`` and ``schema.json``).

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    directory = Path(directory)
    names = sorted(p.name for p in directory.iterdir() if p.suffix in (".csv", ".json"))
    return {n: hashlib.sha256((directory / n).read_bytes()).hexdigest() for n in names}


# SHA-256 of the files that the default ToyShopConfig produces (the committed data set).
TOYSHOP_SHA256 = {
    "items.csv": "2f3b5a153bd6c4f3aa9ec39c4647d3c9b5bed0b0c4c5e3216c96c67706342e8c",
    "ratings.csv": "1e55ffab73ba40b22bc7d170a541dfc7642796b87c39229f2f26e94503813a4e",
    "schema.json": "ab7603fda814da910fa6e840bba52e31ec70950663b60d3a42a574cc1a070f69",
    "users.csv": "69f0e96eaac5f5569b29667aab2f8d583a637ed081bb7358f0a557ecdbc0fe4c",
    # the missing-at-random ratings of chapter 8 (toyrec_helpers.toyshop_exposure)
    "random_exposure.csv": "d3cd81c37c4c36ee2e315d8b9ab866b30c2b30845d33ce612250597fef2a03e1",
}
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "toyshop"


def default_cache_dir() -> Path:
    """Where :func:`toyshop_dir` regenerates the ToyShop when the repository is absent:
    ``$TOYREC_CACHE`` if set, else ``~/.cache/toyrec``.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    return Path(os.environ.get("TOYREC_CACHE", Path.home() / ".cache" / "toyrec"))


def toyshop_dir(cache_dir: str | Path | None = None) -> Path:
    """The directory of the default ToyShop, wherever the package runs.

    In a repository checkout this is ``data/toyshop``. Elsewhere (a notebook opened alone
    in Colab, say) the shop is regenerated from its seed into ``cache_dir`` (default
    :func:`default_cache_dir`), checked against the recorded SHA-256 sums, and reused on
    later calls. Nothing is downloaded.

    Parameters
    ----------
    cache_dir : str or Path, optional
        Where to regenerate. When given, it is used even in a repository checkout.

    Returns
    -------
    Path

    Raises
    ------
    RuntimeError
        If the regenerated files do not match the recorded sums (a different version of a
        library changed the generator's output); the message names the files.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    if cache_dir is None and (REPO_DATA_DIR / "schema.json").is_file():
        return REPO_DATA_DIR
    # the random-exposure ratings (chapter 8) are written next to the shop's files
    from toyrec_helpers.toyshop_exposure import write_random_exposure

    expected = TOYSHOP_SHA256
    target = Path(cache_dir or default_cache_dir()) / f"toyshop-v{GENERATOR_VERSION}"
    if target.is_dir() and file_sha256(target) == expected:
        return target
    if target.exists() and not _is_generated_dir(target):
        raise FileExistsError(
            f"{target}: exists and is not a generated ToyShop directory; refusing to replace it"
        )
    shop = generate_toyshop(ToyShopConfig())
    write_toyshop(shop, target, overwrite=True)
    write_random_exposure(shop, target, overwrite=True)
    sums = file_sha256(target)
    if sums != expected:
        bad = sorted(k for k in expected if sums.get(k) != expected[k])
        raise RuntimeError(
            f"{target}: regenerated ToyShop differs from the recorded checksums in {bad}; "
            "please report the numpy and pandas versions in use"
        )
    return target
