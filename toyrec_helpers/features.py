"""Turn the feature columns named by the schema into model-ready tensors.

Categorical and multi-valued columns become integer vocabularies in which index 0 is
reserved for a value not seen when the vocabulary was fitted (and, for multi-valued
columns, for padding). Numeric and date columns become standardised floats (dates as days
since 1970-01-01). Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from toyrec_helpers.data import Dataset
from toyrec_helpers.schema import TableSpec

UNSEEN = 0
"""Index every vocabulary reserves for a value unseen at fitting time (and for padding)."""


@dataclass(frozen=True)
class EncodedFeatures:
    """Model-ready features of one entity table; row ``i`` is entity index ``i``.

    Attributes
    ----------
    categorical : torch.Tensor
        int64 ``[n, n_cat]``; column ``j`` indexes vocabulary ``j``; 0 = unseen or missing.
    categorical_names, categorical_sizes : tuple
        Column names and vocabulary sizes (the reserved index 0 included).
    multi : tuple of torch.Tensor
        One int64 ``[n, L_j]`` tensor per multi-valued column; 0 = padding or unseen value.
        Models mean-pool over the entries with index > 0.
    multi_names, multi_sizes : tuple
        Column names and vocabulary sizes (index 0 included).
    numeric : torch.Tensor
        float32 ``[n, n_num]``, standardised.
    numeric_names : tuple
        Column names.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """

    categorical: torch.Tensor
    categorical_names: tuple[str, ...]
    categorical_sizes: tuple[int, ...]
    multi: tuple[torch.Tensor, ...]
    multi_names: tuple[str, ...]
    multi_sizes: tuple[int, ...]
    numeric: torch.Tensor
    numeric_names: tuple[str, ...]

    @property
    def n(self) -> int:
        """Number of rows (entities)."""
        return int(self.categorical.shape[0])


@dataclass(frozen=True)
class FeatureEncoder:
    """Vocabularies and standardisation constants fitted on one table.

    Use :func:`fit_encoder` to make one and :meth:`transform` to encode rows, including
    rows that were not there at fitting time (a new shopper, say).

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """

    spec: TableSpec
    vocabularies: dict[str, dict[str, int]]
    means: dict[str, float]
    stds: dict[str, float]

    def transform(self, frame: pd.DataFrame) -> EncodedFeatures:
        """Encode the feature columns of ``frame`` (same columns as the fitted table).

        Parameters
        ----------
        frame : pandas.DataFrame
            Rows to encode, with the schema's feature columns typed as
            :func:`toyrec_helpers.data.load_dataset` types them.

        Returns
        -------
        EncodedFeatures
        """
        n = len(frame)
        cats = self.spec.of_kind("categorical")
        cat = np.zeros((n, len(cats)), dtype=np.int64)
        for j, col in enumerate(cats):
            vocab = self.vocabularies[col.name]
            cat[:, j] = [vocab.get(v, UNSEEN) for v in frame[col.name].astype(str)]
        multis = []
        for col in self.spec.of_kind("multi"):
            vocab = self.vocabularies[col.name]
            rows = [_split(v, col.separator) for v in frame[col.name].astype(str)]
            width = max(1, max((len(r) for r in rows), default=1))
            idx = np.zeros((n, width), dtype=np.int64)
            for i, values in enumerate(rows):
                idx[i, : len(values)] = [vocab.get(v, UNSEEN) for v in values]
            multis.append(torch.from_numpy(idx))
        nums = self.spec.of_kind("numeric", "date")
        num = np.zeros((n, len(nums)), dtype=np.float32)
        for j, col in enumerate(nums):
            raw = _as_float(frame[col.name], col.kind)
            num[:, j] = (raw - self.means[col.name]) / self.stds[col.name]
        return EncodedFeatures(
            categorical=torch.from_numpy(cat),
            categorical_names=tuple(c.name for c in cats),
            categorical_sizes=tuple(len(self.vocabularies[c.name]) + 1 for c in cats),
            multi=tuple(multis),
            multi_names=tuple(c.name for c in self.spec.of_kind("multi")),
            multi_sizes=tuple(
                len(self.vocabularies[c.name]) + 1 for c in self.spec.of_kind("multi")
            ),
            numeric=torch.from_numpy(num),
            numeric_names=tuple(c.name for c in nums),
        )


def _split(value: str, separator: str) -> list[str]:
    return [v.strip() for v in value.split(separator) if v.strip()]


def _as_float(values: pd.Series, kind: str) -> np.ndarray:
    if kind == "date":
        stamps = pd.to_datetime(values)
        return ((stamps - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)).to_numpy(float)
    return values.to_numpy(dtype=np.float64)


def fit_encoder(frame: pd.DataFrame, spec: TableSpec) -> FeatureEncoder:
    """Fit vocabularies (sorted, so the result does not depend on row order) and the mean
    and standard deviation of numeric and date columns.

    Parameters
    ----------
    frame : pandas.DataFrame
        The rows to fit on (for example only the meta-training users).
    spec : TableSpec
        The table's schema; only its feature columns are used.

    Returns
    -------
    FeatureEncoder

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    vocabularies: dict[str, dict[str, int]] = {}
    means: dict[str, float] = {}
    stds: dict[str, float] = {}
    for col in spec.columns:
        if col.kind == "categorical":
            values = sorted({v for v in frame[col.name].astype(str) if v != ""})
            vocabularies[col.name] = {v: i + 1 for i, v in enumerate(values)}
        elif col.kind == "multi":
            values = sorted(
                {v for cell in frame[col.name].astype(str) for v in _split(cell, col.separator)}
            )
            vocabularies[col.name] = {v: i + 1 for i, v in enumerate(values)}
        elif col.kind in ("numeric", "date"):
            raw = _as_float(frame[col.name], col.kind)
            means[col.name] = float(raw.mean()) if len(raw) else 0.0
            std = float(raw.std()) if len(raw) > 1 else 0.0
            stds[col.name] = std if std > 0 else 1.0
    return FeatureEncoder(spec=spec, vocabularies=vocabularies, means=means, stds=stds)


def encode_dataset(
    dataset: Dataset, fit_users: np.ndarray | None = None
) -> tuple[EncodedFeatures, EncodedFeatures, FeatureEncoder, FeatureEncoder]:
    """Encode the user and item tables of a data set.

    Parameters
    ----------
    dataset : Dataset
        A loaded data set.
    fit_users : numpy.ndarray, optional
        Row indices of the users whose values define the user vocabularies (for example
        the meta-training users, so that a value only test users have maps to the reserved
        unseen index). Defaults to all users. Items are always fitted on the whole
        catalogue: the shop knows every toy it sells.

    Returns
    -------
    user_features, item_features : EncodedFeatures
    user_encoder, item_encoder : FeatureEncoder

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    users_fit = dataset.users if fit_users is None else dataset.users.iloc[np.asarray(fit_users)]
    user_encoder = fit_encoder(users_fit, dataset.schema.users)
    item_encoder = fit_encoder(dataset.items, dataset.schema.items)
    return (
        user_encoder.transform(dataset.users),
        item_encoder.transform(dataset.items),
        user_encoder,
        item_encoder,
    )
