"""Save and load meta-learned parameters safely.

A checkpoint is one ``torch.save`` file holding only tensors, strings and numbers, so that
it loads with ``torch.load(path, weights_only=True)`` (no arbitrary code runs when a file
is opened). Configurations are stored as JSON strings. Files are written atomically
(:func:`toyrec_helpers.fileio.atomic_write`: a temporary file in the same folder, then a
rename), so an interrupted run never leaves a
half-written checkpoint under the final name, and an existing file is never replaced unless
``overwrite=True``.

Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toyrec_helpers.fileio import atomic_write

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "toyrec-maml-checkpoint"
"""Value of the ``format`` field that marks a file as one of ours."""
VERSION = 1
"""Version of the file layout."""


class CheckpointError(ValueError):
    """A file is not a usable checkpoint (corrupted, or made for something else).

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """


@dataclass(frozen=True)
class Checkpoint:
    """The contents of a checkpoint file.

    Attributes
    ----------
    path : str
        Where it was loaded from.
    params : dict of str to torch.Tensor
        Model parameters (``model.load_state_dict(checkpoint.params)`` restores them).
    inner_lrs : dict of str to torch.Tensor or None
        Learned inner learning rates (Meta-SGD), if any.
    config : dict
        The training configuration
        (``toyrec_helpers.meta.MetaConfig.from_dict(checkpoint.config)`` rebuilds it).
    model_config : dict
        The architecture description (``model.model_config`` of the saved model).
    extra : dict
        Anything else that was saved (epoch, validation loss, seed, ...).

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """

    path: str
    params: dict[str, torch.Tensor]
    inner_lrs: dict[str, torch.Tensor] | None
    config: dict[str, Any]
    model_config: dict[str, Any]
    extra: dict[str, Any]


def _as_dict(value: Any, name: str) -> dict[str, Any]:
    """A config (dataclass or mapping) as a JSON-compatible dict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"argument {name!r}: expected a dataclass or a dict, got "
                        f"{type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), sort_keys=True))
    except (TypeError, ValueError) as err:
        raise TypeError(f"argument {name!r} must be JSON-serialisable: {err}") from None


def _tensors(values: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in values.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"argument {name!r}: expected a dict of str to Tensor, got an "
                            f"entry {key!r}: {type(tensor).__name__}")
        out[key] = tensor.detach().cpu().clone().contiguous()
    return out


def save_checkpoint(
    path: str | os.PathLike[str],
    params: Mapping[str, torch.Tensor],
    config: Any,
    model_config: Mapping[str, Any],
    inner_lrs: Mapping[str, torch.Tensor] | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint atomically.

    Parameters
    ----------
    path : path
        File to write. Its folder must exist.
    params : dict of str to torch.Tensor
        Model parameters (saved detached, on the CPU).
    config : MetaConfig or dict
        Training configuration (stored as JSON).
    model_config : dict
        Architecture description, e.g. ``model.model_config`` (stored as JSON).
    inner_lrs : dict of str to torch.Tensor, optional
        Learned inner learning rates (Meta-SGD).
    extra : dict, optional
        JSON-serialisable extras (epoch, validation loss, seed, ...).
    overwrite : bool
        Replace an existing file. Without it an existing file is an error.

    Returns
    -------
    pathlib.Path
        The path written.

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save checkpoint {str(path)!r}: folder "
                                f"{str(path.parent)!r} does not exist")
    if path.exists() and not overwrite:
        raise FileExistsError(f"checkpoint {str(path)!r} already exists; pass overwrite=True "
                              "to replace it")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "params": _tensors(params, "params"),
        "inner_lrs": None if inner_lrs is None else _tensors(inner_lrs, "inner_lrs"),
        "config": json.dumps(_as_dict(config, "config"), sort_keys=True),
        "model_config": json.dumps(_as_dict(model_config, "model_config"), sort_keys=True),
        "extra": json.dumps(_as_dict(extra or {}, "extra"), sort_keys=True),
    }
    # Atomic, and never replaces a file that appears meanwhile unless `overwrite`.
    return atomic_write(path, lambda handle: torch.save(payload, handle), overwrite=overwrite)


def _differences(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    missing = "<missing>"
    return [
        f"{key}: checkpoint has {saved.get(key, missing)!r}, expected "
        f"{expected.get(key, missing)!r}"
        for key in sorted(set(saved) | set(expected))
        if saved.get(key, missing) != expected.get(key, missing)
    ]


def _check_tensor_dict(value: Any, field: str, path: str) -> dict[str, torch.Tensor]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise CheckpointError(f"{path!r}: field {field!r} is not a dict of str to Tensor")
    return value


def load_checkpoint(
    path: str | os.PathLike[str],
    expected_model_config: Mapping[str, Any] | None = None,
    expected_config: Any = None,
    model: nn.Module | None = None,
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, and check it.

    Parameters
    ----------
    path : path
        File to read (with ``torch.load(path, weights_only=True)``).
    expected_model_config : dict, optional
        If given, the saved architecture description must equal it; by default, when
        ``model`` is given, ``model.model_config``.
    expected_config : MetaConfig or dict, optional
        If given, the saved training configuration must equal it.
    model : torch.nn.Module, optional
        If given, the saved parameters must have exactly its parameter names and shapes.

    Returns
    -------
    Checkpoint

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError
        The file is not a checkpoint (corrupted, truncated, another format), or it does
        not match the expectations; the message names the path and what differs.

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to read means "not a checkpoint"
        raise CheckpointError(
            f"{path!r} is not a toyrec checkpoint: it could not be read "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); the "
            "file may be truncated or corrupted"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a toyrec checkpoint (no format={FORMAT!r} "
                              "field)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path!r} has checkpoint version {payload.get('version')!r}; "
                              f"this code reads version {VERSION}")
    try:
        config = json.loads(payload["config"])
        model_config = json.loads(payload["model_config"])
        extra = json.loads(payload["extra"])
        params = _check_tensor_dict(payload["params"], "params", path)
        inner_lrs = payload["inner_lrs"]
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path!r} is not a complete toyrec checkpoint ({err!r})") from err
    if not all(isinstance(d, dict) for d in (config, model_config, extra)):
        raise CheckpointError(f"{path!r}: config, model_config and extra must be JSON objects")
    if inner_lrs is not None:
        inner_lrs = _check_tensor_dict(inner_lrs, "inner_lrs", path)
        for name, rate in inner_lrs.items():
            if name not in params or tuple(rate.shape) not in ((), tuple(params[name].shape)):
                raise CheckpointError(f"{path!r}: inner_lrs[{name!r}] does not match a saved "
                                      "parameter (name or shape)")

    if expected_model_config is None and model is not None:
        expected_model_config = getattr(model, "model_config", None)
    if expected_model_config is not None:
        diff = _differences(model_config, _as_dict(expected_model_config,
                                                   "expected_model_config"))
        if diff:
            raise CheckpointError(f"{path!r} was saved for a different model: "
                                  + "; ".join(diff))
    if expected_config is not None:
        diff = _differences(config, _as_dict(expected_config, "expected_config"))
        if diff:
            raise CheckpointError(f"{path!r} was saved with a different configuration: "
                                  + "; ".join(diff))
    if model is not None:
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        missing = sorted(set(shapes) - set(params))
        unexpected = sorted(set(params) - set(shapes))
        wrong = [f"{n}: checkpoint {tuple(params[n].shape)}, model {shapes[n]}"
                 for n in sorted(set(shapes) & set(params)) if tuple(params[n].shape) != shapes[n]]
        problems = []
        if missing:
            problems.append(f"missing parameters {missing}")
        if unexpected:
            problems.append(f"unexpected parameters {unexpected}")
        if wrong:
            problems.append("wrong shapes: " + "; ".join(wrong))
        if problems:
            raise CheckpointError(f"{path!r} does not fit {type(model).__name__}: "
                                  + "; ".join(problems))
    return Checkpoint(path=path, params=params, inner_lrs=inner_lrs, config=config,
                      model_config=model_config, extra=extra)
