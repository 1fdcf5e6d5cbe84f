"""Measuring one benchmark configuration: its meta-step, peak memory, checks and latency.

Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toyrec_helpers.accel import sparse_meta_loss, sparse_predict_adapted
from toyrec_helpers.bench.problem import ORDERS, BenchSizes, make_hybrid
from toyrec_helpers.episodes import EpisodeBatch
from toyrec_helpers.meta import (
    MetaConfig,
    make_meta_optimizer,
    meta_loss,
    meta_loss_reference,
    meta_step,
    predict_adapted,
)
from toyrec_helpers.models import FeatureRecommender

__all__ = [
    "hybrid_latency",
    "CompileTimeout", "cpu_peak_bytes", "device_name", "error_text", "gradient_checks", "latency",
    "loss_function", "make_step", "peak_mb", "percentile", "sync", "time_limit"
]


def device_name(device: torch.device) -> str:
    """Human-readable name of the device (GPU name, or the CPU model).

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
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


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA); nothing on the CPU.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CompileTimeout(Exception):
    """Raised by the alarm of :func:`time_limit`.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`CompileTimeout` after ``seconds`` (POSIX main thread only).

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def alarm(signum: int, frame: Any) -> None:
        raise CompileTimeout(f"gave up after {seconds:g} s (compile timeout)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


def cpu_peak_bytes(step: Callable[[], None]) -> int | None:
    """Peak bytes of torch tensors allocated (and still live) during ``step()`` on CPU,
    from the allocation events of ``torch.profiler`` (``None`` if they cannot be read).

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
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


def peak_mb(step: Callable[[], None], device: torch.device) -> float | None:
    """Peak tensor memory of one call of ``step`` in MiB: on CUDA
    ``torch.cuda.max_memory_allocated`` minus the memory allocated before; on the CPU
    :func:`cpu_peak_bytes`.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    peak = cpu_peak_bytes(step)
    return None if peak is None else peak / 2**20


def error_text(exc: BaseException) -> str:
    """The first line of ``"Type: message"`` of an exception (at most 500 characters).

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:500]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (numpy's linear interpolation).

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def loss_function(
    impl: str, adapt: str, model: FeatureRecommender, config: MetaConfig
) -> Callable[[dict[str, torch.Tensor], EpisodeBatch], torch.Tensor]:
    """The meta-loss of one configuration, as ``f(params, batch)``.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    if adapt == "all_sparse":
        vectorize = impl != "loop"
        return lambda p, b: sparse_meta_loss(model, p, b, config, vectorize=vectorize)
    if impl == "loop":
        return lambda p, b: meta_loss_reference(model, p, b, config)
    return lambda p, b: meta_loss(model, p, b, config)


def make_step(
    loss_fn: Callable[[dict[str, torch.Tensor], EpisodeBatch], torch.Tensor],
    model: FeatureRecommender,
    params: dict[str, torch.Tensor],
    batch: EpisodeBatch,
    config: MetaConfig,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> Callable[[], None]:
    """One meta-step as a function of no arguments: :func:`toyrec_helpers.meta.meta_step`
    with the meta-loss ``loss_fn(params, batch)`` computed under ``autocast`` and Adam at
    learning rate 1e-4. No host sync.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    config = dataclasses.replace(config, outer_lr=1e-4)
    optimizer = make_meta_optimizer(params, config)

    def loss(model: FeatureRecommender, p: dict[str, torch.Tensor], b: EpisodeBatch,
             config: MetaConfig, inner_lrs: Any) -> torch.Tensor:
        with autocast():
            return loss_fn(p, b)

    def step() -> None:
        meta_step(model, params, optimizer, batch, config, loss_fn=loss)

    return step


def gradient_checks(
    model: FeatureRecommender, batch: EpisodeBatch, inner_steps: int
) -> dict[str, float]:
    """Relative max difference of the float32 meta-gradients: sparse and loop vs vmap.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
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


def latency(
    model: FeatureRecommender,
    params: dict[str, torch.Tensor],
    shopper: EpisodeBatch,
    inner_steps: int,
    repeats: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> dict[str, Any]:
    """p50/p99 ms of adapting one new shopper and scoring every item (sparse and dense).

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
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
                sync(device)
                if i >= warmup:  # warm-up excluded
                    times.append((time.perf_counter() - start) * 1e3)
        except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
            result[f"{key}_error"] = error_text(exc)
            continue
        stats = {"p50": percentile(times, 50), "p99": percentile(times, 99)}
        if key == "sparse":
            result.update(stats)
        else:
            result["dense"] = stats
    return result


def hybrid_latency(sizes: BenchSizes | str, inner_steps: int, repeats: int,
                   seed: int = 0) -> dict[str, Any]:
    """p50/p99 ms of serving one new shopper with the hybrid model (CPU): adapt its
    shopper part on ``LATENCY_K`` support ratings and score every item
    (:meth:`~toyrec_helpers.hybrid.HybridServer.recommend`, the shopper's profile cached);
    ``profile`` is the once-per-shopper cost of their unadapted scores
    (:meth:`~toyrec_helpers.hybrid.HybridServer.profile`) and ``item_side_ms`` the
    one-off cost of caching the item side.

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    from toyrec_helpers.hybrid import HybridServer

    model, support, ratings = make_hybrid(sizes, seed)
    params = {n: p.detach() for n, p in model.named_parameters()}
    start = time.perf_counter()
    server = HybridServer(model, params, steps=inner_steps, lr=0.05)
    item_side_ms = (time.perf_counter() - start) * 1e3
    times, profile = [], []
    for i in range(repeats + min(5, repeats)):
        user = i % model.n_users
        start = time.perf_counter()
        server.profile(user)  # once per shopper, before their first rating
        middle = time.perf_counter()
        server.recommend(user, support, ratings)
        if i >= min(5, repeats):  # warm-up excluded
            profile.append((middle - start) * 1e3)
            times.append((time.perf_counter() - middle) * 1e3)
    return {"path": f"hybrid.HybridServer, adapt='head', K={len(support)}, {inner_steps} "
                    f"inner steps, items='all' ({model.n_items})",
            "repeats": repeats, "p50": percentile(times, 50), "p99": percentile(times, 99),
            "profile": {"p50": percentile(profile, 50), "p99": percentile(profile, 99)},
            "item_side_ms": item_side_ms, "threads": torch.get_num_threads()}
