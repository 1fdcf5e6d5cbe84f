"""Writing files safely: atomic replacement and strict JSON.

Every file the package writes (evaluation and benchmark JSON, checkpoints) goes through
:func:`atomic_write`: the content is written to a temporary file in the same folder, flushed
to disk, and only then moved over the target with ``os.replace`` (or hard-linked, when an
existing file must not be replaced). A reader therefore sees the old file or the new one,
never half of one, and an interrupted run leaves no partial file behind.

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_write", "atomic_write_dir", "json_ready", "write_json_atomic"]


def json_ready(value: Any) -> Any:
    """``value`` as strict-JSON data: NaN and infinities become ``None``, numpy scalars
    and arrays become Python numbers and lists, tuples become lists (recursively).

    Parameters
    ----------
    value : Any
        A number, string, ``None``, or a dict / list / tuple of these.

    Returns
    -------
    Any
        Data that ``json.dumps(..., allow_nan=False)`` accepts.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.integer) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], Any],
    *,
    overwrite: bool = True,
) -> Path:
    """Write a file atomically: ``write(handle)`` fills a temporary file, which then
    replaces ``path``.

    Parameters
    ----------
    path : path
        The file to write; its folder is created when missing.
    write : callable
        Called once with a binary file handle open for writing.
    overwrite : bool
        ``False``: fail with ``FileExistsError`` if ``path`` exists, also when it appears
        while the content is being written (the file is hard-linked into place).

    Returns
    -------
    Path

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass overwrite=True to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails if `path` appeared in the meantime
            except FileExistsError:
                raise FileExistsError(f"{path}: already exists; pass overwrite=True to "
                                      "replace it") from None
            except OSError:  # a file system without hard links
                if path.exists():
                    raise FileExistsError(f"{path}: already exists; pass overwrite=True to "
                                          "replace it") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``json_ready(payload)`` to ``path`` atomically, indented by 2, with a final
    newline; NaN is written as ``null``.

    Parameters
    ----------
    path : path
        The JSON file (replaced if it exists: check first whether that is allowed).
    payload : Any
        Data accepted by :func:`json_ready`.

    Returns
    -------
    Path

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    text = json.dumps(json_ready(payload), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_dir(out: str | os.PathLike[str], fill: Callable[[Path], Any]) -> Path:
    """Write a directory atomically: ``fill(tmp)`` fills a new temporary directory beside
    ``out``, which then replaces ``out`` (removed first if it exists: check before calling
    that it may be replaced). A failure in ``fill`` leaves ``out`` as it was.

    ``fill`` is called once with the temporary directory's path (mode 0o755); the result
    is ``out`` as a ``Path``. Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)
        fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
