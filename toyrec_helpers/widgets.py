"""The "you are a new shopper" demo: plain functions, and a thin ipywidgets front end.

:func:`combined_for_new_shopper` ranks with chapter 8's combined ranker ("will choose and
will like") and says what each of the shopper's choices changed; :func:`build_demo` uses
it when given a choice model (``choice=``).

Everything the demo computes lives in plain functions (:func:`recommend_for_new_shopper`,
:func:`explain_change`, ...), tested without a browser; :func:`build_demo` only wires them to
widgets. Column names come from the data set's schema, so the demo works on any shop.
Introduced in chapter 6 (book/06b_who_benefits.ipynb).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from toyrec_helpers.data import Dataset
from toyrec_helpers.episodes import Episode, collate
from toyrec_helpers.features import EncodedFeatures, FeatureEncoder
from toyrec_helpers.meta import MetaConfig, predict_adapted
from toyrec_helpers.models import FeatureRecommender


def append_rows(features: EncodedFeatures, rows: EncodedFeatures) -> EncodedFeatures:
    """The rows of ``features`` followed by ``rows`` (same columns and vocabularies).

    Multi-valued columns are padded with index 0 to the wider of the two.
    Introduced in chapter 6 (book/06b_who_benefits.ipynb).
    """
    if (features.categorical_names, features.multi_names, features.numeric_names) != (
        rows.categorical_names,
        rows.multi_names,
        rows.numeric_names,
    ):
        raise ValueError("append_rows: the two tables have different columns")
    multi = []
    for a, b in zip(features.multi, rows.multi, strict=True):
        width = max(a.shape[1], b.shape[1])
        a = torch.nn.functional.pad(a, (0, width - a.shape[1]))
        b = torch.nn.functional.pad(b, (0, width - b.shape[1]))
        multi.append(torch.cat([a, b]))
    return replace(
        features,
        categorical=torch.cat([features.categorical, rows.categorical]),
        multi=tuple(multi),
        numeric=torch.cat([features.numeric, rows.numeric]),
    )


def model_with_new_user(
    model: FeatureRecommender,
    user_features: EncodedFeatures,
    item_features: EncodedFeatures,
    new_user: EncodedFeatures,
) -> tuple[FeatureRecommender, int]:
    """A copy of ``model``'s architecture whose user table has one more row, the new user.

    The feature model's parameters do not depend on the number of users (its embeddings
    are per feature value), so the same parameter dictionary works for the copy.

    Returns
    -------
    model : FeatureRecommender
        The copy (parameters as in ``model``).
    index : int
        The new user's row index.

    Introduced in chapter 6 (book/06b_who_benefits.ipynb).
    """
    if new_user.n != 1:
        raise ValueError(f"new_user must have exactly one row, got {new_user.n}")
    table = append_rows(user_features, new_user)
    copy = FeatureRecommender(
        table,
        item_features,
        embedding_dim=model.embedding_dim,
        hidden=model.hidden,
        rating_mean=model.rating_mean,
    )
    copy.load_state_dict(model.state_dict())
    return copy, user_features.n


def demo_items(
    dataset: Dataset, n: int = 8, group_by: str | None = None, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Toys to show a new shopper for rating: the most-rated toy of each of the ``n``
    largest groups (by the first categorical item column, or ``group_by``), so the handful
    covers different kinds of toys. Deterministic.

    Introduced in chapter 6 (book/06b_who_benefits.ipynb).
    """
    column = group_by or _first_categorical(dataset)
    counts = np.bincount(dataset.interactions["item"], minlength=dataset.n_items)
    frame = pd.DataFrame({"group": dataset.items[column].to_numpy(), "count": counts})
    if exclude is not None:
        frame = frame.drop(index=np.asarray(exclude))
    frame = frame.sort_values(["count"], ascending=False, kind="stable")
    best = frame.groupby("group", sort=False).head(1)
    return best.index.to_numpy()[:n]


def _first_categorical(dataset: Dataset) -> str:
    columns = dataset.schema.items.of_kind("categorical")
    if not columns:
        raise ValueError("the item table has no categorical column to group or explain by")
    return columns[0].name


@dataclass(frozen=True)
class NewShopperResult:
    """Scores of every item for a new shopper before and after adapting to their ratings.

    Attributes
    ----------
    before, after : numpy.ndarray
        float ``[n_items]`` predicted ratings with no adaptation and after adaptation.
    rated : numpy.ndarray
        The items the shopper rated (never recommended back).
    top_before, top_after : numpy.ndarray
        The ``k`` best unrated items before and after, best first.

    Introduced in chapter 6 (book/06b_who_benefits.ipynb).
    """

    before: np.ndarray
    after: np.ndarray
    rated: np.ndarray
    top_before: np.ndarray
    top_after: np.ndarray


def top_k(scores: np.ndarray, exclude: np.ndarray, k: int = 10) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first, skipping ``exclude``; ties go to
    the lower index. Introduced in chapter 6 (book/06b_who_benefits.ipynb)."""
    masked = np.asarray(scores, dtype=np.float64).copy()
    masked[np.asarray(exclude, dtype=np.int64)] = -np.inf
    order = np.argsort(-masked, kind="stable")
    return order[: min(k, int(np.isfinite(masked).sum()))]


def recommend_for_new_shopper(
    model: FeatureRecommender,
    params: Mapping[str, torch.Tensor],
    config: MetaConfig,
    user_features: EncodedFeatures,
    item_features: EncodedFeatures,
    new_user: EncodedFeatures,
    ratings: Mapping[int, float],
    inner_lrs: Mapping[str, torch.Tensor] | None = None,
    k: int = 10,
) -> NewShopperResult:
    """Adapt a (meta-learned) model to a new shopper's handful of ratings.

    Parameters
    ----------
    model, params, config, inner_lrs
        The model, its parameters and the inner-loop settings (as in
        :func:`toyrec_helpers.meta.predict_adapted`).
    user_features, item_features : EncodedFeatures
        The tables the model was built with.
    new_user : EncodedFeatures
        One encoded row: the shopper's attributes (see :func:`encode_new_user`).
    ratings : mapping of item index to rating
        What the shopper rated (at least one).
    k : int
        Length of the recommendation lists.

    Returns
    -------
    NewShopperResult

    Introduced in chapter 6 (book/06b_who_benefits.ipynb).
    """
    if not ratings:
        raise ValueError("ratings: rate at least one item")
    bad = [i for i in ratings if not 0 <= int(i) < item_features.n]
    if bad:
        raise ValueError(f"ratings: item indices {bad} are outside 0..{item_features.n - 1}")
    demo_model, user = model_with_new_user(model, user_features, item_features, new_user)
    items = np.array(sorted(int(i) for i in ratings), dtype=np.int64)
    values = np.array([float(ratings[i]) for i in items], dtype=np.float32)
    episode = Episode(user, items, values, items[:1], values[:1])
    batch = collate([episode])
    none = replace(config, inner_steps=0)
    before = predict_adapted(demo_model, params, batch, none, items="all")[0].numpy()
    after = predict_adapted(demo_model, params, batch, config, inner_lrs, items="all")[0].numpy()
    return NewShopperResult(
        before=before,
        after=after,
        rated=items,
        top_before=top_k(before, items, k),
        top_after=top_k(after, items, k),
    )


def encode_new_user(
    encoder: FeatureEncoder, values: Mapping[str, Any], defaults: pd.Series | None = None
) -> EncodedFeatures:
    """Encode one new shopper's attributes with the fitted user encoder.

    Parameters
    ----------
    encoder : FeatureEncoder
        The user encoder returned by :func:`toyrec_helpers.features.encode_dataset`.
    values : mapping
        Column name -> value for the attributes the shopper gave (e.g. the child's age band).
    defaults : pandas.Series, optional
        Values for the other feature columns (e.g. a typical shopper's row); a missing
        categorical value is encoded as unseen (index 0).

    Introduced in chapter 6 (book/06b_who_benefits.ipynb).
    """
    row: dict[str, Any] = {}
    for col in encoder.spec.columns:
        if col.name in values:
            row[col.name] = values[col.name]
        elif defaults is not None and col.name in defaults.index:
            row[col.name] = defaults[col.name]
        elif col.kind in ("numeric",):
            row[col.name] = encoder.means[col.name]
        elif col.kind == "date":
            row[col.name] = pd.Timestamp("1970-01-01") + pd.Timedelta(
                days=encoder.means[col.name]
            )
        else:
            row[col.name] = ""
    unknown = sorted(set(values) - {c.name for c in encoder.spec.columns})
    if unknown:
        raise ValueError(f"values: {unknown} are not user feature columns")
    return encoder.transform(pd.DataFrame([row]))


def explain_change(
    items: pd.DataFrame, column: str, top_before: np.ndarray, top_after: np.ndarray
) -> str:
    """One line on what adaptation changed in the top list, by the values of ``column``.

    For example ``"Puzzles rose from 1 to 4 of the top 10; Plush fell from 3 to 0."``
    Introduced in chapter 6 (book/06b_who_benefits.ipynb).
    """
    before = items[column].iloc[np.asarray(top_before)].value_counts()
    after = items[column].iloc[np.asarray(top_after)].value_counts()
    change = after.subtract(before, fill_value=0).astype(int)
    change = change[change != 0]
    if change.empty:
        return f"The same mix of {column} values as before adaptation."
    k = len(top_after)
    rose = change[change > 0].sort_values(ascending=False, kind="stable")
    fell = change[change < 0].sort_values(kind="stable")
    parts = []
    if len(rose):
        value = rose.index[0]
        parts.append(
            f"{value} rose from {int(before.get(value, 0))} to {int(after.get(value, 0))} "
            f"of the top {k}"
        )
    if len(fell):
        value = fell.index[0]
        parts.append(
            f"{value} fell from {int(before.get(value, 0))} to {int(after.get(value, 0))}"
        )
    return "; ".join(parts) + "."


@dataclass(frozen=True)
class ChoiceSteps:
    """A new shopper's catalogue ranked by "will choose and will like" after each choice.

    Attributes
    ----------
    scores : list of numpy.ndarray
        ``log P(choose) + log P(r >= 4)`` of every item after 0, 1, ..., n choices.
    tops : list of numpy.ndarray
        The ``k`` best items not chosen, best first, after 0, 1, ..., n choices.
    lines : list of str
        What each choice changed in the top list (one line per choice).

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """

    scores: list[np.ndarray]
    tops: list[np.ndarray]
    lines: list[str]


def combined_for_new_shopper(
    dataset: Dataset, choice_model: Any, choice_params: Mapping[str, torch.Tensor],
    user_x: torch.Tensor, chosen: list[int], predicted: np.ndarray, sigma: float,
    steps: int, lr: float, k: int = 10, threshold: float = 4.0,
) -> ChoiceSteps:
    """Rank with the combined ranker (chapter 8) after each of a new shopper's choices.

    Parameters
    ----------
    dataset : Dataset
        For the item table (what changed is told by its first categorical column).
    choice_model, choice_params, steps, lr
        A :class:`~toyrec_helpers.choice.ChoiceModel`, its (meta-learned) parameters and
        its inner loop.
    user_x : torch.Tensor
        The shopper's dense features (:func:`toyrec_helpers.choice.dense_features` of
        :func:`encode_new_user`'s row).
    chosen : list of int
        The toys the shopper chose, in order.
    predicted : numpy.ndarray
        ``[n_items]`` predicted ratings from a rating model adapted to the shopper (e.g.
        :attr:`NewShopperResult.after`).
    sigma : float
        Spread of a rating around its prediction.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    from toyrec_helpers.choice import new_shopper_log_probs
    from toyrec_helpers.choice_rankers import like_probability

    if not chosen:
        raise ValueError("chosen: choose at least one toy")
    like = like_probability(torch.as_tensor(np.asarray(predicted, dtype=np.float64)), sigma,
                            threshold).clamp_min(1e-12).log().numpy()
    exclude = np.asarray(chosen, dtype=np.int64)
    scores, tops, lines = [], [], []
    explain_by = _first_categorical(dataset)
    title = dataset.schema.items.title or dataset.schema.items.id
    for j in range(len(chosen) + 1):
        score = new_shopper_log_probs(choice_model, choice_params, user_x, chosen[:j], steps,
                                      lr) + like
        scores.append(score)
        tops.append(top_k(score, exclude, k))
        if j:
            change = explain_change(dataset.items, explain_by, tops[j - 1], tops[j])
            lines.append(f"after choosing {dataset.items[title].iloc[chosen[j - 1]]}: {change}")
    return ChoiceSteps(scores, tops, lines)


def top_table(
    dataset: Dataset, indices: np.ndarray, scores: np.ndarray, columns: list[str] | None = None
) -> pd.DataFrame:
    """The items at ``indices`` with their title, some feature columns and the score.

    Introduced in chapter 6 (book/06b_who_benefits.ipynb).
    """
    spec = dataset.schema.items
    shown = ([spec.title] if spec.title else [spec.id]) + (
        columns if columns is not None else [c.name for c in spec.of_kind("categorical")][:2]
    )
    frame = dataset.items[shown].iloc[np.asarray(indices)].copy()
    frame["predicted"] = np.round(np.asarray(scores)[np.asarray(indices)], 2)
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="rank")
    return frame


def build_demo(
    dataset: Dataset,
    model: FeatureRecommender,
    params: Mapping[str, torch.Tensor],
    config: MetaConfig,
    user_features: EncodedFeatures,
    item_features: EncodedFeatures,
    user_encoder: FeatureEncoder,
    inner_lrs: Mapping[str, torch.Tensor] | None = None,
    n_items: int = 8,
    k: int = 10,
    choice: Mapping[str, Any] | None = None,
) -> Any:
    """The interactive demo: choose attributes, rate a handful of toys, press *Adapt*.

    Shows the top-``k`` before and after adaptation side by side and one line on what
    changed. With ``choice`` (keys ``model``, ``params``, ``steps``, ``lr``, ``sigma``:
    a choice model, chapter 8) the list after adaptation ranks by "will choose and will
    like" (:func:`combined_for_new_shopper`), the toys shown counting as chosen in order,
    and the message says what each choice changed. Requires ``ipywidgets``; returns the
    widget (display it as a cell's last expression).

    Introduced in chapter 6 (book/06b_who_benefits.ipynb).
    """
    import ipywidgets as widgets

    spec = dataset.schema
    explain_by = _first_categorical(dataset)
    choices = demo_items(dataset, n_items)
    title = spec.items.title or spec.items.id
    attribute_boxes = {
        col.name: widgets.Dropdown(
            options=sorted(user_encoder.vocabularies[col.name]),
            description=col.name,
            style={"description_width": "initial"},
        )
        for col in spec.users.of_kind("categorical")
    }
    sliders = {
        int(i): widgets.IntSlider(
            value=3,
            min=int(spec.rating_min),
            max=int(spec.rating_max),
            description="",
            layout=widgets.Layout(width="220px"),
        )
        for i in choices
    }
    rows = [
        widgets.HBox(
            [
                widgets.Label(
                    f"{dataset.items[title].iloc[i]} ({dataset.items[explain_by].iloc[i]})",
                    layout=widgets.Layout(width="420px"),
                ),
                slider,
            ]
        )
        for i, slider in sliders.items()
    ]
    button = widgets.Button(description="Adapt", button_style="primary")
    before_out, after_out = widgets.Output(), widgets.Output()
    message = widgets.HTML("<i>Rate the toys, then press Adapt.</i>")

    def on_click(_: Any) -> None:
        values = {name: box.value for name, box in attribute_boxes.items()}
        new_user = encode_new_user(user_encoder, values)
        result = recommend_for_new_shopper(
            model, params, config, user_features, item_features, new_user,
            {i: s.value for i, s in sliders.items()}, inner_lrs=inner_lrs, k=k,
        )  # fmt: skip
        top_after, after, heading_after = result.top_after, result.after, "After adaptation"
        steps = None
        if choice is not None:
            from toyrec_helpers.choice import dense_features

            steps = combined_for_new_shopper(
                dataset, choice["model"], choice["params"], dense_features(new_user)[0],
                list(sliders), result.after, choice["sigma"], choice["steps"], choice["lr"],
                k=k)
            top_after, after = steps.tops[-1], steps.scores[-1]
            heading_after = "Will choose and will like"
        for out, top, scores, heading in (
            (before_out, result.top_before, result.before, "Before adaptation"),
            (after_out, top_after, after, heading_after),
        ):
            out.clear_output()
            with out:
                print(heading)
                print(top_table(dataset, top, scores).to_string())
        message.value = explain_change(
            dataset.items, explain_by, result.top_before, result.top_after
        ) if steps is None else "<br>".join(steps.lines)

    button.on_click(on_click)
    return widgets.VBox(
        [
            widgets.HTML("<b>You are a new shopper.</b> Tell us a little, rate a few toys:"),
            widgets.HBox(list(attribute_boxes.values())),
            *rows,
            button,
            message,
            widgets.HBox([before_out, after_out]),
        ]
    )
