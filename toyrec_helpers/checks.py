"""Argument checks shared by every module: one wording for one mistake.

Each check returns the cleaned value or raises an error that names the argument (or the
settings field) and what was expected, e.g. ``MetaConfig.inner_steps: expected an integer
>= 0, got -1``. The label is passed in whole (``"argument 'epochs'"``,
``"EvalConfig.ks"``), so the same check serves functions and settings classes.

Introduced in chapter 3 (book/03_base_recommender.ipynb).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["check_choice", "check_int", "check_number", "check_params", "int_tuple"]

def check_int(value: Any, label: str, minimum: int = 0) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) ``>= minimum``.

    Parameters
    ----------
    value : Any
        The value to check.
    label : str
        How the error names it, e.g. ``"argument 'epochs'"`` or ``"MetaConfig.epochs"``.
    minimum : int
        Smallest allowed value.

    Returns
    -------
    int

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{label}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_number(value: Any, label: str, *, positive: bool = True) -> float:
    """``value`` as a ``float`` if it is a finite number, ``> 0`` (``positive``) or
    ``>= 0``.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value) or value < 0 or (positive and value == 0)):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{label}: expected a finite number {bound}, got {value!r}")
    return float(value)


def check_choice(value: Any, label: str, allowed: tuple[Any, ...]) -> Any:
    """``value`` if it is one of ``allowed``.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    if value not in allowed:
        raise ValueError(f"{label}: expected one of {allowed}, got {value!r}")
    return value


def int_tuple(value: Any, label: str, minimum: int = 0, distinct: bool = True) -> tuple[int, ...]:
    """A non-empty tuple of integers ``>= minimum`` (distinct unless ``distinct=False``);
    a single integer is a tuple of one.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    try:
        items = tuple(value)
    except TypeError:
        items = (value,)
    bad = [v for v in items
           if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum]
    if not items or bad:
        raise ValueError(f"{label}: expected a non-empty sequence of integers >= {minimum}, "
                         f"got {value!r}")
    out = tuple(int(v) for v in items)
    if distinct and len(set(out)) != len(out):
        raise ValueError(f"{label}: values must be distinct, got {value!r}")
    return out


def check_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Raise ``KeyError`` unless ``params`` names exactly the parameters of ``model``.

    Introduced in chapter 4 (book/04_maml_inner_loop.ipynb).
    """
    expected = {n for n, _ in model.named_parameters()}
    missing, extra = sorted(expected - set(params)), sorted(set(params) - expected)
    if missing or extra:
        raise KeyError(f"argument 'params' must hold exactly the parameters of "
                       f"{type(model).__name__}; missing {missing}, unexpected {extra}")
