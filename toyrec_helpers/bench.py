"""Benchmark of meta-training and adaptation: loop vs vmap vs torch.compile, dense vs sparse.

Everything runs in one process on synthetic data of realistic size (no data set needed):

* **meta-training throughput**: one meta-step = forward + backward + Adam step on one
  meta-batch, for every combination of implementation (``loop`` =
  :func:`toyrec_helpers.meta.meta_loss_reference`, ``vmap`` =
  :func:`toyrec_helpers.meta.meta_loss`, ``compiled`` = ``torch.compile`` of the ``vmap``
  meta-loss), order (second, first) and adaptation (``all_dense``: every parameter, dense
  tables; ``all_sparse``: every parameter, :func:`toyrec_helpers.accel.sparse_meta_loss`;
  ``head``: decision layers only). For ``loop`` + ``all_sparse`` the sparse task function
  runs in a Python loop (``sparse_meta_loss(..., vectorize=False)``). Configurations are
  interleaved: each repeat times every configuration once (starting from a rotating
  position), and the median over repeats is reported as ``tasks_per_s = meta_batch /
  median seconds``. Warm-up steps are excluded; for ``compiled`` the first call (which
  compiles forward and backward) is reported separately as ``compile_s``.
* **peak memory** of one meta-step per configuration, in an extra untimed step: on CUDA
  ``torch.cuda.max_memory_allocated`` minus the memory allocated before the step; on CPU
  the peak, over the step, of the bytes of live torch tensors allocated since its start,
  read from the allocation events of ``torch.profiler`` (``profile_memory=True``). Both
  count tensor memory only (no allocator cache, no Python objects), so the numbers of the
  two devices mean the same thing. The process RSS would not do on CPU: its high-water
  mark never goes down, so interleaved configurations could not be told apart.
* **one-new-shopper latency**: adapt one task (``K = 5`` support ratings, all parameters,
  sparse) and predict every item, ``latency_repeats`` times: p50 and p99 in ms (the dense
  :func:`toyrec_helpers.meta.predict_adapted` path is timed too, for comparison).
* **checks**: before timing, the meta-gradients of ``vmap`` dense, sparse and loop are
  compared in float32 on the benchmark device (relative max difference).

Introduced in chapter 7 (book/07_gpu_acceleration.ipynb).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toyrec_helpers.accel import sparse_meta_loss, sparse_predict_adapted
from toyrec_helpers.episodes import Episode, EpisodeBatch, collate
from toyrec_helpers.features import EncodedFeatures
from toyrec_helpers.meta import MetaConfig, meta_loss, meta_loss_reference, predict_adapted
from toyrec_helpers.models import FeatureRecommender

__all__ = [
    "ADAPTS",
    "IMPLS",
    "ORDERS",
    "SIZES",
    "BenchSizes",
    "format_results",
    "make_problem",
    "run_bench",
]

IMPLS = ("loop", "vmap", "compiled")
ORDERS = ("second", "first")
ADAPTS = ("all_dense", "all_sparse", "head")


@dataclass(frozen=True)
class BenchSizes:
    """Sizes of a synthetic benchmark problem.

    Attributes
    ----------
    name : str
        Label.
    n_users, n_items : int
        Table sizes.
    user_categorical, item_categorical : tuple of int
        Vocabulary sizes (index 0 included) of the categorical columns.
    user_multi, item_multi : tuple of (int, int)
        ``(vocabulary size, width)`` of each multi-valued column.
    user_numeric, item_numeric : int
        Numbers of numeric columns.
    embedding_dim : int
        Embedding size.
    hidden : tuple of int
        Hidden widths of the MLP.
    support, query : int
        Ratings per task in the support and query sets.
    inner_steps : int
        Inner-loop steps.

    Introduced in chapter 7 (book/07_gpu_acceleration.ipynb).
    """

    name: str
    n_users: int
    n_items: int
    user_categorical: tuple[int, ...]
    user_multi: tuple[tuple[int, int], ...]
    user_numeric: int
    item_categorical: tuple[int, ...]
    item_multi: tuple[tuple[int, int], ...]
    item_numeric: int
    embedding_dim: int
    hidden: tuple[int, ...]
    support: int
    query: int
    inner_steps: int


SIZES: dict[str, BenchSizes] = {
    # MeLU on MovieLens-1M: user gender, age, occupation, zip code; item rating class,
    # director (categorical), genres and actors (multi-valued, up to 3), and the year:
    # 8 embedding tables of width 32 + 1 numeric = 257 inputs, MLP 256-128-64-1.
    "melu": BenchSizes(
        name="melu", n_users=6040, n_items=3706,
        user_categorical=(3, 8, 22, 3403), user_multi=(), user_numeric=0,
        item_categorical=(7, 2187), item_multi=((26, 3), (8031, 3)), item_numeric=1,
        embedding_dim=32, hidden=(256, 128, 64), support=10, query=10, inner_steps=5,
    ),
    # The ToyShop model of the book.
    "toyshop": BenchSizes(
        name="toyshop", n_users=3000, n_items=600,
        user_categorical=(5, 6), user_multi=(), user_numeric=1,
        item_categorical=(12, 25, 5), item_multi=((15, 3),), item_numeric=2,
        embedding_dim=8, hidden=(64, 32), support=5, query=10, inner_steps=5,
    ),
    # Tiny: for tests (quick mode).
    "tiny": BenchSizes(
        name="tiny", n_users=40, n_items=50,
        user_categorical=(3, 4), user_multi=(), user_numeric=1,
        item_categorical=(5, 6), item_multi=((6, 2),), item_numeric=1,
        embedding_dim=4, hidden=(8,), support=4, query=4, inner_steps=2,
    ),
}
"""The ``--sizes`` choices of ``python -m toyrec_helpers bench``."""

LATENCY_K = 5
"""Support ratings of the one-new-shopper latency measurement."""


def _features(
    n: int,
    categorical: tuple[int, ...],
    multi: tuple[tuple[int, int], ...],
    numeric: int,
    prefix: str,
    gen: torch.Generator,
) -> EncodedFeatures:
    """Random encoded features: categorical in ``1..size-1`` (a few unseen zeros)."""
    cat = [torch.randint(1, s, (n,), generator=gen) for s in categorical]
    cat = [c * (torch.rand(n, generator=gen) > 0.02) for c in cat]
    multi_tables = []
    for size, width in multi:
        table = torch.randint(1, size, (n, width), generator=gen)
        table[:, 1:] *= torch.rand(n, width - 1, generator=gen) > 0.4  # 1..width values
        multi_tables.append(table)
    return EncodedFeatures(
        categorical=torch.stack(cat, 1) if cat else torch.zeros((n, 0), dtype=torch.int64),
        categorical_names=tuple(f"{prefix}_cat{j}" for j in range(len(categorical))),
        categorical_sizes=tuple(categorical),
        multi=tuple(multi_tables),
        multi_names=tuple(f"{prefix}_multi{j}" for j in range(len(multi))),
        multi_sizes=tuple(size for size, _ in multi),
        numeric=torch.randn(n, numeric, generator=gen),
        numeric_names=tuple(f"{prefix}_num{j}" for j in range(numeric)),
    )


def make_problem(
    sizes: BenchSizes | str, meta_batch: int, seed: int = 0
) -> tuple[FeatureRecommender, EpisodeBatch, EpisodeBatch]:
    """A synthetic model, meta-batch and one-new-shopper task of the given sizes.

    Parameters
    ----------
    sizes : BenchSizes or str
        Sizes, or a key of :data:`SIZES`.
    meta_batch : int
        Tasks in the meta-batch.
    seed : int
        Seed of the features, the episodes and the model's initialisation.

    Returns
    -------
    model : FeatureRecommender
        float32, on the CPU.
    batch : EpisodeBatch
        ``meta_batch`` tasks with ``sizes.support`` support and ``sizes.query`` query
        ratings (random distinct items, ratings 1..5).
    shopper : EpisodeBatch
        One more task with ``min(5, sizes.support)`` support ratings.

    Introduced in chapter 7 (book/07_gpu_acceleration.ipynb).
    """
    if isinstance(sizes, str):
        if sizes not in SIZES:
            raise ValueError(f"argument 'sizes': expected one of {sorted(SIZES)}, got {sizes!r}")
        sizes = SIZES[sizes]
    if meta_batch < 1:
        raise ValueError(f"argument 'meta_batch': expected >= 1, got {meta_batch}")
    gen = torch.Generator().manual_seed(seed)
    users = _features(sizes.n_users, sizes.user_categorical, sizes.user_multi,
                      sizes.user_numeric, "user", gen)
    items = _features(sizes.n_items, sizes.item_categorical, sizes.item_multi,
                      sizes.item_numeric, "item", gen)
    torch.manual_seed(seed)
    model = FeatureRecommender(users, items, embedding_dim=sizes.embedding_dim,
                               hidden=sizes.hidden)
    rng = np.random.default_rng(seed)

    def episode(k: int, q: int) -> Episode:
        chosen = rng.choice(sizes.n_items, size=k + q, replace=False).astype(np.int64)
        ratings = rng.integers(1, 6, size=k + q).astype(np.float32)
        return Episode(user=int(rng.integers(sizes.n_users)), support_items=chosen[:k],
                       support_ratings=ratings[:k], query_items=chosen[k:],
                       query_ratings=ratings[k:])

    batch = collate([episode(sizes.support, sizes.query) for _ in range(meta_batch)])
    shopper = collate([episode(min(LATENCY_K, sizes.support), sizes.query)])
    return model, batch, shopper


# --------------------------------------------------------------------------- helpers
def device_name(device: torch.device) -> str:
    """Human-readable name of the device (GPU name, or the CPU model).

    Introduced in chapter 7 (book/07_gpu_acceleration.ipynb).
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({os.cpu_count()} logical CPUs)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _CompileTimeout(Exception):
    """Raised by the alarm of :func:`_time_limit`."""


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`_CompileTimeout` after ``seconds`` (POSIX main thread only)."""
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def alarm(signum: int, frame: Any) -> None:
        raise _CompileTimeout(f"gave up after {seconds:g} s (compile timeout)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


def _cpu_peak_bytes(step: Callable[[], None]) -> int | None:
    """Peak bytes of torch tensors allocated (and still live) during ``step()`` on CPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:
        events = prof.profiler.kineto_results.events()
        deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    except (AttributeError, RuntimeError):
        return None
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak


def _peak_mb(step: Callable[[], None], device: torch.device) -> float | None:
    """Peak tensor memory of one call of ``step`` in MiB (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    peak = _cpu_peak_bytes(step)
    return None if peak is None else peak / 2**20


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:500]


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _write_json_atomic(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    payload = _finite(payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# --------------------------------------------------------------------------- configurations
@dataclass
class _Run:
    """One benchmark configuration and its measurements."""

    impl: str
    order: str
    adapt: str
    step: Callable[[], None] | None = None
    times: list[float] | None = None
    compile_s: float | None = None
    peak_mem_mb: float | None = None
    error: str | None = None

    def row(self, meta_batch: int, steps: int) -> dict[str, Any]:
        median = statistics.median(self.times) if self.times else None
        return {
            "impl": self.impl,
            "order": self.order,
            "adapt": self.adapt,
            "tasks_per_s": None if not median else meta_batch / median,
            # The fastest repeat: on a shared machine, the closest to an idle one.
            "tasks_per_s_best": None if not self.times else meta_batch / min(self.times),
            "step_s_median": median,
            "step_s": self.times or [],
            "peak_mem_mb": self.peak_mem_mb,
            "compile_s": self.compile_s,
            "error": self.error,
        }


def _loss_function(
    impl: str, adapt: str, model: FeatureRecommender, config: MetaConfig
) -> Callable[[dict[str, torch.Tensor], EpisodeBatch], torch.Tensor]:
    """The meta-loss of one configuration, as ``f(params, batch)``."""
    if adapt == "all_sparse":
        vectorize = impl != "loop"
        return lambda p, b: sparse_meta_loss(model, p, b, config, vectorize=vectorize)
    if impl == "loop":
        return lambda p, b: meta_loss_reference(model, p, b, config)
    return lambda p, b: meta_loss(model, p, b, config)


def _make_step(
    loss_fn: Callable[[dict[str, torch.Tensor], EpisodeBatch], torch.Tensor],
    params: dict[str, torch.Tensor],
    batch: EpisodeBatch,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> Callable[[], None]:
    """One meta-step: forward (under ``autocast``), backward, Adam step. No host sync."""
    optimizer = torch.optim.Adam(list(params.values()), lr=1e-4)

    def step() -> None:
        with autocast():
            loss = loss_fn(params, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _checks(
    model: FeatureRecommender, batch: EpisodeBatch, inner_steps: int
) -> dict[str, float]:
    """Relative max difference of the float32 meta-gradients: sparse and loop vs vmap."""
    out = {}
    small = batch.select(slice(0, min(4, len(batch))))
    for order in ORDERS:
        config = MetaConfig(inner_steps=inner_steps, adapt="all", order=order)
        params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        reference = torch.autograd.grad(meta_loss(model, params, small, config),
                                        list(params.values()))
        scale = max(float(g.abs().max()) for g in reference) or 1.0
        for name, fn in (("sparse", sparse_meta_loss), ("loop", meta_loss_reference)):
            grads = torch.autograd.grad(fn(model, params, small, config), list(params.values()))
            diff = max(float((a - b).abs().max()) for a, b in zip(grads, reference, strict=True))
            out[f"{name}_vs_vmap_{order}"] = diff / scale
    return out


def _latency(
    model: FeatureRecommender,
    params: dict[str, torch.Tensor],
    shopper: EpisodeBatch,
    inner_steps: int,
    repeats: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> dict[str, Any]:
    """p50/p99 ms of adapting one new shopper and scoring every item (sparse and dense)."""
    config = MetaConfig(inner_steps=inner_steps, adapt="all")
    result: dict[str, Any] = {
        "path": f"accel.sparse_predict_adapted, adapt='all', K={shopper.support_items.shape[1]}, "
                f"{inner_steps} inner steps, items='all' ({model.n_items})",
        "repeats": repeats,
    }
    for key, fn in (("sparse", sparse_predict_adapted), ("dense", predict_adapted)):
        times = []
        try:
            warmup = min(5, repeats)
            for i in range(repeats + warmup):
                start = time.perf_counter()
                with torch.no_grad(), autocast():
                    fn(model, params, shopper, config, items="all", chunk_size=None)
                _sync(device)
                if i >= warmup:  # warm-up excluded
                    times.append((time.perf_counter() - start) * 1e3)
        except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
            result[f"{key}_error"] = _error_text(exc)
            continue
        stats = {"p50": _percentile(times, 50), "p99": _percentile(times, 99)}
        if key == "sparse":
            result.update(stats)
        else:
            result["dense"] = stats
    return result


# --------------------------------------------------------------------------- main entry
@dataclass(frozen=True)
class _Settings:
    device: torch.device
    meta_batch: int
    repeats: int
    sizes: BenchSizes
    compile: bool
    bf16: bool
    json_path: str | os.PathLike[str] | None
    steps: int
    latency_repeats: int
    compile_timeout_s: float | None
    compile_budget_s: float | None
    impls: tuple[str, ...]
    orders: tuple[str, ...]
    adapts: tuple[str, ...]
    seed: int
    latency_threads: int | None


# Compiled configurations in order of interest: if the compile budget runs out, the dense
# all-parameter version (the one the sparse version replaces) is the first to go.
_COMPILE_PRIORITY = {"head": 0, "all_sparse": 1, "all_dense": 2}


def run_bench(
    device: str | torch.device = "cpu",
    meta_batch: int = 32,
    repeats: int = 5,
    sizes: str = "melu",
    compile: bool = True,
    bf16: bool = False,
    json_path: str | os.PathLike[str] | None = None,
    quick: bool = False,
    steps: int = 1,
    latency_repeats: int = 200,
    compile_timeout_s: float | None = 600.0,
    compile_budget_s: float | None = None,
    impls: Sequence[str] = IMPLS,
    orders: Sequence[str] = ORDERS,
    adapts: Sequence[str] = ADAPTS,
    threads: int | None = None,
    latency_threads: int | None = 1,
    seed: int = 0,
    compiler: Callable[..., Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return (and optionally write) its results.

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"`` or ``"cuda"`` (``"cuda:N"``). Data and model live on it throughout.
    meta_batch : int
        Tasks per meta-step.
    repeats : int
        Timed repeats per configuration (interleaved); the median is reported.
    sizes : {"melu", "toyshop", "tiny"}
        Problem size (see :data:`SIZES`).
    compile : bool
        Include ``impl="compiled"``. A compile failure, timeout or exhausted budget is
        recorded in the row's ``error`` and the benchmark goes on.
    bf16 : bool
        Run the forward passes under ``torch.autocast(device_type, dtype=torch.bfloat16)``
        (meant for CUDA; the float32 gradient checks are not affected).
    json_path : path, optional
        Write the results here as JSON, atomically (temporary file + rename): once after
        the warm-ups and after every repeat with ``"complete": false``, so that a run cut
        short still leaves its measurements, and at the end with ``"complete": true``.
    quick : bool
        Quick mode for tests: ``sizes="tiny"``, ``repeats=2``, at most 5 latency repeats.
    steps : int
        Meta-steps per timed measurement (one synchronisation at the end).
    latency_repeats : int
        Timed calls of the one-new-shopper adaptation.
    compile_timeout_s : float or None
        Give up compiling one configuration after this many seconds (POSIX main thread
        only; ``None`` = no limit).
    compile_budget_s : float or None
        Total seconds for all compilations; configurations left when it is spent are
        skipped (recorded). Default: 180 s on CUDA (so that a GPU run stays within a few
        minutes), 1800 s on CPU.
    impls, orders, adapts : sequence of str
        Subsets of :data:`IMPLS`, :data:`ORDERS`, :data:`ADAPTS` to run.
    threads : int, optional
        ``torch.set_num_threads`` for the run (restored afterwards).
    latency_threads : int or None
        Intra-op threads for the one-new-shopper latency on CPU (default 1: one small
        request is served best by one thread, and a second thread only adds waits when
        the machine is busy); ``None`` = as for the rest. Ignored on CUDA.
    seed : int
        Seed of the synthetic problem.
    compiler : callable, optional
        Replaces ``torch.compile`` (for tests).
    log : callable, optional
        Called with a progress line now and then (the CLI prints them to stderr).

    Returns
    -------
    dict
        ``device``, ``torch``, ``threads``, ``date``, ``meta_batch``, ``sizes``,
        ``results`` (one row per configuration: ``impl``, ``order``, ``adapt``,
        ``tasks_per_s``, ``peak_mem_mb``, ``compile_s``, ``error``, and the raw step
        times), ``adapt_latency_ms`` (``p50``, ``p99`` and the dense path's), ``checks``,
        ``summary`` (speed-ups and memory ratios against the loop) and the settings.

    Introduced in chapter 7 (book/07_gpu_acceleration.ipynb).
    """
    if quick:
        sizes, repeats, latency_repeats = "tiny", 2, min(latency_repeats, 5)
    for name, values, allowed in (("impls", impls, IMPLS), ("orders", orders, ORDERS),
                                  ("adapts", adapts, ADAPTS)):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise ValueError(f"argument {name!r}: expected a non-empty subset of {allowed}, "
                             f"got {list(values)}")
    for name, value in (("repeats", repeats), ("steps", steps), ("meta_batch", meta_batch),
                        ("latency_repeats", latency_repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"argument {name!r}: expected an integer >= 1, got {value!r}")
    if sizes not in SIZES:
        raise ValueError(f"argument 'sizes': expected one of {sorted(SIZES)}, got {sizes!r}")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"argument 'device': expected cpu or cuda, got {device}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for, but torch.cuda.is_available() is False")
    if compile_budget_s is None:
        compile_budget_s = 180.0 if device.type == "cuda" else 1800.0
    settings = _Settings(
        device=device, meta_batch=meta_batch, repeats=repeats, sizes=SIZES[sizes],
        compile=bool(compile), bf16=bool(bf16), json_path=json_path, steps=steps,
        latency_repeats=latency_repeats, compile_timeout_s=compile_timeout_s,
        compile_budget_s=compile_budget_s,
        impls=tuple(i for i in impls if compile or i != "compiled"),
        orders=tuple(orders), adapts=tuple(adapts), seed=seed,
        latency_threads=latency_threads,
    )
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _run(settings, compiler or torch.compile, log or (lambda _line: None))
    finally:
        torch.set_num_threads(old_threads)


def _run(
    st: _Settings, compiler: Callable[..., Any], say: Callable[[str], None]
) -> dict[str, Any]:
    device, sizes = st.device, st.sizes
    model, batch, shopper = make_problem(sizes, st.meta_batch, st.seed)
    model = model.to(device)
    batch, shopper = batch.to(device), shopper.to(device)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=st.bf16)

    result: dict[str, Any] = {
        "complete": False,
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "meta_batch": st.meta_batch,
        "sizes": sizes.name,
        "size_details": asdict(sizes),
        "n_parameters": sum(p.numel() for p in base.values()),
        "repeats": st.repeats,
        "steps_per_repeat": st.steps,
        "bf16": st.bf16,
        "compile": st.compile,
        "compile_budget_s": st.compile_budget_s,
        "peak_mem_method": (
            "torch.cuda.max_memory_allocated minus allocated before the step"
            if device.type == "cuda" else
            "peak bytes of live torch tensors allocated during the step "
            "(torch.profiler profile_memory allocation events)"
        ),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "results": [],
        "adapt_latency_ms": {},
        "checks": {},
        "summary": {},
    }
    runs = [_Run(i, o, a) for i in st.impls for o in st.orders for a in st.adapts]

    def save(complete: bool = False) -> None:
        result["results"] = [run.row(st.meta_batch, st.steps) for run in runs]
        result["summary"] = _summary(result["results"])
        result["complete"] = complete
        if st.json_path is not None:
            _write_json_atomic(st.json_path, result)

    say(f"bench: {result['device']}, torch {torch.__version__}, "
        f"{result['threads']} threads, sizes={sizes.name}, meta_batch={st.meta_batch}")
    try:
        result["checks"] = _checks(model, batch, sizes.inner_steps)
    except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
        result["checks"] = {"error": _error_text(exc)}
    say(f"bench: float32 meta-gradient checks {result['checks']}")

    budget_left = st.compile_budget_s
    order = sorted(runs, key=lambda r: (r.impl == "compiled", _COMPILE_PRIORITY[r.adapt]))
    for run in order:
        config = MetaConfig(inner_steps=sizes.inner_steps,
                            adapt="head" if run.adapt == "head" else "all", order=run.order)
        params = {n: p.clone().requires_grad_() for n, p in base.items()}
        loss_fn = _loss_function(run.impl, run.adapt, model, config)
        label = f"{run.impl}/{run.order}/{run.adapt}"
        try:
            if run.impl == "compiled":
                if budget_left is not None and budget_left <= 0:
                    raise _CompileTimeout(f"skipped: compile budget of "
                                          f"{st.compile_budget_s:g} s spent")
                limit = min((t for t in (st.compile_timeout_s, budget_left) if t is not None),
                            default=None)
                start = time.perf_counter()
                try:
                    loss_fn = compiler(loss_fn)
                    step = _make_step(loss_fn, params, batch, autocast)
                    with _time_limit(limit):
                        step()  # compiles forward and backward
                        _sync(device)
                finally:
                    run.compile_s = time.perf_counter() - start
                    if budget_left is not None:
                        budget_left -= run.compile_s
                say(f"bench: {label} compiled in {run.compile_s:.1f} s")
            else:
                step = _make_step(loss_fn, params, batch, autocast)
            step()  # warm-up
            _sync(device)
            run.peak_mem_mb = _peak_mb(step, device)
            run.step = step
            run.times = []
            say(f"bench: {label} ready (peak {run.peak_mem_mb} MiB)")
        except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
            run.error = _error_text(exc)
            say(f"bench: {label} failed: {run.error}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del params
    save()

    live = [run for run in runs if run.step is not None]
    for r in range(st.repeats):
        gc.collect()  # once per repeat (it takes long); no collection inside a timing
        gc.disable()
        try:
            for k in range(len(live)):
                run = live[(k + r) % len(live)]  # rotate the starting configuration
                if run.step is None:
                    continue
                try:
                    _sync(device)
                    start = time.perf_counter()
                    for _ in range(st.steps):
                        run.step()
                    _sync(device)
                    run.times.append((time.perf_counter() - start) / st.steps)
                except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
                    run.error, run.step, run.times = _error_text(exc), None, None
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
        finally:
            gc.enable()
        say(f"bench: repeat {r + 1}/{st.repeats} done")
        save()
    for run in runs:
        run.step = None

    threads = torch.get_num_threads()
    if device.type == "cpu" and st.latency_threads is not None:
        torch.set_num_threads(st.latency_threads)
    try:
        result["adapt_latency_ms"] = _latency(model, base, shopper, sizes.inner_steps,
                                              st.latency_repeats, device, autocast)
        result["adapt_latency_ms"]["threads"] = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    say(f"bench: one new shopper p50 {result['adapt_latency_ms'].get('p50')} ms")
    save(complete=True)
    return result


def _summary(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Speed-ups and peak-memory ratios of vmap/compiled over the reference loop.

    The reference is ``loop`` with the same order and ``all_dense`` (for ``all_dense`` and
    ``all_sparse``: :func:`meta.meta_loss_reference` adapting every parameter) or ``head``.
    """
    by = {(r["impl"], r["order"], r["adapt"]): r for r in rows}
    out: dict[str, float | None] = {}

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    for order in ORDERS:
        for adapt in ADAPTS:
            loop = by.get(("loop", order, "head" if adapt == "head" else "all_dense"))
            if loop is None:
                continue
            for impl in ("vmap", "compiled"):
                row = by.get((impl, order, adapt))
                if row is None:
                    continue
                out[f"{impl}_{order}_{adapt}_speedup"] = ratio(row["tasks_per_s"],
                                                               loop["tasks_per_s"])
                out[f"{impl}_{order}_{adapt}_speedup_best"] = ratio(
                    row["tasks_per_s_best"], loop["tasks_per_s_best"])
                out[f"{impl}_{order}_{adapt}_mem_ratio"] = ratio(row["peak_mem_mb"],
                                                                 loop["peak_mem_mb"])
    return out


def format_results(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`run_bench` results.

    Introduced in chapter 7 (book/07_gpu_acceleration.ipynb).
    """

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
            else format(value, fmt)

    lines = [
        f"device: {result['device']} | torch {result['torch']} | threads {result['threads']} "
        f"| sizes {result['sizes']} | meta_batch {result['meta_batch']} | bf16 {result['bf16']}",
        f"{'impl':<9} {'order':<7} {'adapt':<11} {'tasks/s':>9} {'best':>9} {'peak MiB':>9} "
        f"{'compile s':>9}  error",
    ]
    for row in result["results"]:
        lines.append(
            f"{row['impl']:<9} {row['order']:<7} {row['adapt']:<11} "
            f"{num(row['tasks_per_s'], '.1f'):>9} {num(row['tasks_per_s_best'], '.1f'):>9} "
            f"{num(row['peak_mem_mb'], '.2f'):>9} "
            f"{num(row['compile_s'], '.1f'):>9}  {row['error'] or ''}"
        )
    lat = result["adapt_latency_ms"]
    dense = lat.get("dense", {})
    lines.append(
        f"one new shopper (adapt + score all items, {lat.get('threads', '?')} thread(s)): "
        f"p50 {num(lat.get('p50'), '.2f')} ms, "
        f"p99 {num(lat.get('p99'), '.2f')} ms (dense path: p50 "
        f"{num(dense.get('p50'), '.2f')} ms, p99 {num(dense.get('p99'), '.2f')} ms)"
    )
    lines.append(f"checks (relative max gradient difference): {result['checks']}")
    return "\n".join(lines)
