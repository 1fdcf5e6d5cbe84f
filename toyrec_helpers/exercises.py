"""Self-checks for the code exercises: ``check("ch4-ex-bias", answer)`` says right or wrong.

A student computes an exercise's answer in the notebook and passes it to :func:`check`,
which prints whether it is right and, if not, a hint. It never prints the solution. The
reference answers are not stored in plain text: exact answers (counts, slices) as salted
SHA-256 hashes, numbers as a compressed, encoded table read only inside :func:`check`;
answers that are functions are tested on random inputs.

Exercises with a check (their labels in the chapters):

- ``ch1-ex-reg``: the new shoppers' MAE with ``lambda_u = 0`` (a number);
- ``ch1-ex-weighted``: the pooled MAE of the baseline predictor on new shoppers (a number);
- ``ch1-ex-popular``: ``(observed, expected)`` mean ratings of the 10 most-rated toys;
- ``ch2-ex-k``: the number of meta-test shoppers skipped with ``K = Q = 10`` (an integer);
- ``ch2-ex-mask``: a function ``masked_mean(ratings, mask) -> [T]`` (each task's mean);
- ``ch4-ex-bias``: ``(share, alpha_90)``, the share of the mean residual corrected by five
  steps of 0.01, and the step size that corrects 90% in five steps;
- ``ch10-ex-shares``: the three slices of a meta-batch of 32 tasks (``range`` objects,
  ``slice`` objects or lists of task indices).

Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import numbers
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["check", "exercises"]

# Numeric references, compressed and base64-encoded so that reading the module does not show
# them; decoded only by `_numbers`.
_ENCODED = (
    "eJxNi1sKgzAUBbcS/I7hPhJvbrciflgbVBAUbakg7r1YK/R8zszZsqbDPK35nNrsZkpw6gUray7+Tn3bPdPjJwXlT07j"
    "9Brq+XDsgo/BGnKqeib+SO59vZxf0AJECZjgO7EGHEYfCJlEgiowx2r/AKw6Jg4="
)
_SALT = "toyrec-exercises"


@dataclass(frozen=True)
class _Exercise:
    """How one exercise's answer is checked."""

    kind: str  # "numbers", "hash" or "function"
    expects: str  # the form of the answer, shown when the answer has the wrong form
    hint: str
    tolerances: tuple[float, ...] = ()
    digest: str = ""


_EXERCISES: dict[str, _Exercise] = {
    "ch1-ex-reg": _Exercise(
        "numbers", "one number: the new shoppers' mean per-shopper MAE",
        "Without shrinkage the new shopper's bias is the plain mean of their first five "
        "residuals r - mu - b_i: divide the sum by 5, not by lambda_u + 5, and score on the "
        "same last-10 ratings as before.", (0.005,)),
    "ch1-ex-weighted": _Exercise(
        "numbers", "one number: the pooled MAE",
        "Average the absolute errors of the baseline predictor over all test ratings of the "
        "new shoppers at once, without grouping by shopper first.", (0.001,)),
    "ch1-ex-popular": _Exercise(
        "numbers", "two numbers: (observed mean rating, answer-key mean over all shoppers)",
        "Take the 10 toys with the most ratings; average each one's observed ratings, then "
        "average those 10 means; for the answer key, average its column of each of the 10 "
        "toys over every shopper.", (0.01, 0.01)),
    "ch2-ex-k": _Exercise(
        "hash", "an integer: the number of skipped shoppers",
        "A shopper needs K + Q = 20 ratings for a 10-shot episode with 10 query ratings; "
        "count the meta-test shoppers (split.test) with fewer.",
        digest="e09b7f628f6e51e426cbf539f0cd78e57a638e4ed2a54fba5eb63f4802c8f00d"),
    "ch2-ex-mask": _Exercise(
        "function", "a function masked_mean(ratings, mask) returning one mean per task",
        "Multiply the ratings by the mask before summing over dim 1, and divide by the number "
        "of real ratings (the mask's sum), not by the padded width."),
    "ch4-ex-bias": _Exercise(
        "numbers", "two numbers: (share corrected by alpha = 0.01 and L = 5, alpha for 90%)",
        "Each step multiplies the remaining mean residual by (1 - 2 alpha); the share corrected "
        "after L steps is 1 minus that factor to the power L. For 90%, solve "
        "(1 - 2 alpha)^5 = 0.1 for alpha.", (1e-3, 0.005)),
    "ch10-ex-shares": _Exercise(
        "hash", "three slices, each a range, a slice or a list of task indices",
        "Call distributed.shard on a batch of 32 tasks for ranks 0, 1, 2 of 3 and see which "
        "tasks each slice holds; give each slice as range(start, stop), stop excluded.",
        digest="6501aa1ef4fa5db83179e4783853ba2fd5294a8faac587fcc11b67e50ee3fc5e"),
}


def exercises() -> list[str]:
    """The exercise labels that :func:`check` knows, in chapter order.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    return list(_EXERCISES)


def check(exercise_id: str, answer: Any, *, quiet: bool = False) -> bool:
    """Say whether ``answer`` solves the exercise ``exercise_id``; give a hint if not.

    Parameters
    ----------
    exercise_id : str
        The exercise's label in the chapter, e.g. ``"ch4-ex-bias"``; see :func:`exercises`.
    answer : Any
        What the exercise asks for: a number, a tuple of numbers, an integer, a function or
        a list of slices (the module docstring lists the form for each exercise).
    quiet : bool
        When true, print nothing and only return the verdict.

    Returns
    -------
    bool
        True when the answer is right. The solution itself is never printed.

    Raises
    ------
    KeyError
        If ``exercise_id`` is not an exercise with a check.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    if exercise_id not in _EXERCISES:
        raise KeyError(f"argument 'exercise_id': no check for {exercise_id!r}; "
                       f"exercises with a check: {', '.join(_EXERCISES)}")
    exercise = _EXERCISES[exercise_id]
    try:
        if exercise.kind == "numbers":
            right = _check_numbers(exercise_id, exercise, answer)
        elif exercise.kind == "hash":
            right = _digest(exercise_id, _canonical(exercise_id, answer)) == exercise.digest
        else:
            right = _check_masked_mean(answer)
    except _WrongForm as error:
        if not quiet:
            print(f"{exercise_id}: expected {exercise.expects}; got {error}.")
        return False
    if not quiet:
        if right:
            print(f"{exercise_id}: right.")
        else:
            print(f"{exercise_id}: not yet. Hint: {exercise.hint}")
    return right


class _WrongForm(ValueError):
    """The answer does not have the form the exercise asks for."""


def _numbers() -> dict[str, list[float]]:
    return json.loads(zlib.decompress(base64.b64decode(_ENCODED)))


def _as_floats(answer: Any, n: int) -> list[float]:
    if isinstance(answer, torch.Tensor):
        answer = answer.detach().cpu().reshape(-1).tolist()
    elif hasattr(answer, "tolist") and not isinstance(answer, str):  # numpy arrays, scalars
        answer = answer.tolist()
    values = [answer] if n == 1 and not isinstance(answer, Sequence | dict) else answer
    if isinstance(values, str | dict) or not isinstance(values, Sequence) or len(values) != n:
        raise _WrongForm(f"{type(answer).__name__} {answer!r}")
    floats = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _WrongForm(f"{type(value).__name__} {value!r}")
        floats.append(float(value))
    return floats


def _check_numbers(exercise_id: str, exercise: _Exercise, answer: Any) -> bool:
    reference = _numbers()[exercise_id]
    values = _as_floats(answer, len(reference))
    return all(math.isfinite(v) and abs(v - r) <= tol
               for v, r, tol in zip(values, reference, exercise.tolerances, strict=True))


def _digest(exercise_id: str, canonical: str) -> str:
    return hashlib.sha256(f"{_SALT}:{exercise_id}:{canonical}".encode()).hexdigest()


def _indices(part: Any) -> list[int]:
    if isinstance(part, range):
        return list(part)
    if isinstance(part, slice):
        if part.start is None or part.stop is None or part.step not in (None, 1):
            raise _WrongForm(f"slice {part!r} (give its start and stop)")
        return list(range(part.start, part.stop))
    if isinstance(part, torch.Tensor):
        part = part.reshape(-1).tolist()
    elif hasattr(part, "tolist"):
        part = part.tolist()
    if not isinstance(part, Sequence) or isinstance(part, str):
        raise _WrongForm(f"{type(part).__name__} {part!r}")
    if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in part):
        raise _WrongForm(f"{part!r} (task indices must be integers)")
    return [int(i) for i in part]


def _canonical(exercise_id: str, answer: Any) -> str:
    if exercise_id == "ch2-ex-k":
        if hasattr(answer, "item") and not isinstance(answer, bool):
            answer = answer.item()
        if isinstance(answer, bool) or not isinstance(answer, numbers.Integral):
            raise _WrongForm(f"{type(answer).__name__} {answer!r}")
        return str(int(answer))
    if isinstance(answer, str) or not isinstance(answer, Sequence):
        raise _WrongForm(f"{type(answer).__name__} {answer!r}")
    parts = []
    for part in answer:
        indices = sorted(_indices(part))
        contiguous = indices == list(range(indices[0], indices[-1] + 1)) if indices else True
        parts.append([indices[0], indices[-1] + 1] if indices and contiguous else indices)
    return json.dumps(parts)


def _check_masked_mean(answer: Any) -> bool:
    if not isinstance(answer, Callable):
        raise _WrongForm(f"{type(answer).__name__} (pass the function itself)")
    generator = torch.Generator().manual_seed(20)
    for _ in range(3):
        ratings = torch.randint(1, 6, (5, 7), generator=generator).float()
        lengths = torch.randint(1, 8, (5,), generator=generator)
        lengths[0] = 7  # one task without padding, as in the chapter's batch
        mask = (torch.arange(7) < lengths[:, None]).float()
        ratings = ratings * mask  # padding holds zeros, as collate writes it
        expected = (ratings * mask).sum(1) / mask.sum(1)
        try:
            got = answer(ratings.clone(), mask.clone())
        except Exception as error:  # a student's function may fail in any way
            raise _WrongForm(f"a function that raised {type(error).__name__}: {error}") from None
        try:
            got = torch.as_tensor(got, dtype=torch.float32).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise _WrongForm(f"a function that returned {type(got).__name__}") from None
        if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-5):
            return False
    return True
