"""Running the benchmark: interleaved timing of every configuration, the JSON result and
its text table.

Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from toyrec_helpers.bench.measure import (
    CompileTimeout,
    device_name,
    error_text,
    gradient_checks,
    hybrid_latency,
    latency,
    loss_function,
    make_step,
    peak_mb,
    sync,
    time_limit,
)
from toyrec_helpers.bench.problem import ADAPTS, IMPLS, ORDERS, SIZES, BenchSizes, make_problem
from toyrec_helpers.checks import check_choice, check_int
from toyrec_helpers.fileio import write_json_atomic
from toyrec_helpers.meta import MetaConfig

__all__ = ["FORMAT", "VERSION", "format_results", "run_bench", "summary"]

FORMAT = "toyrec-bench"
"""Value of the ``format`` field of a benchmark JSON file."""
VERSION = 2
"""Version of the benchmark JSON layout. Version 1 (files without ``format``) named the
summary keys ``{impl}_over_loop_{order}_{adapt}`` and ``{impl}_{order}_{adapt}_mem_over_loop``
and had no ``..._speedup_best``; :mod:`toyrec_helpers.bench.convert` converts such files."""


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
        ``format`` (:data:`FORMAT`), ``version`` (:data:`VERSION`), ``converted_from``
        (``None``; see :mod:`toyrec_helpers.bench.convert`), ``complete``,
        ``device``, ``torch``, ``threads``, ``date``, ``meta_batch``, ``sizes``,
        ``results`` (one row per configuration: ``impl``, ``order``, ``adapt``,
        ``tasks_per_s``, ``peak_mem_mb``, ``compile_s``, ``error``, and the raw step
        times), ``adapt_latency_ms`` (``p50``, ``p99`` and the dense path's; on CPU also
        ``hybrid``, the hybrid model's cached path of chapter 7), ``checks``,
        ``summary`` (speed-ups and memory ratios against the loop) and the settings.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
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
        check_int(value, f"argument {name!r}", 1)
    check_choice(sizes, "argument 'sizes'", tuple(sorted(SIZES)))
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
        "format": FORMAT,
        "version": VERSION,
        "converted_from": None,
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
        result["summary"] = summary(result["results"])
        result["complete"] = complete
        if st.json_path is not None:
            write_json_atomic(st.json_path, result)

    say(f"bench: {result['device']}, torch {torch.__version__}, "
        f"{result['threads']} threads, sizes={sizes.name}, meta_batch={st.meta_batch}")
    try:
        result["checks"] = gradient_checks(model, batch, sizes.inner_steps)
    except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
        result["checks"] = {"error": error_text(exc)}
    say(f"bench: float32 meta-gradient checks {result['checks']}")

    budget_left = st.compile_budget_s
    order = sorted(runs, key=lambda r: (r.impl == "compiled", _COMPILE_PRIORITY[r.adapt]))
    for run in order:
        config = MetaConfig(inner_steps=sizes.inner_steps,
                            adapt="head" if run.adapt == "head" else "all", order=run.order)
        params = {n: p.clone().requires_grad_() for n, p in base.items()}
        loss_fn = loss_function(run.impl, run.adapt, model, config)
        label = f"{run.impl}/{run.order}/{run.adapt}"
        try:
            if run.impl == "compiled":
                if budget_left is not None and budget_left <= 0:
                    raise CompileTimeout(f"skipped: compile budget of "
                                          f"{st.compile_budget_s:g} s spent")
                limit = min((t for t in (st.compile_timeout_s, budget_left) if t is not None),
                            default=None)
                start = time.perf_counter()
                try:
                    loss_fn = compiler(loss_fn)
                    step = make_step(loss_fn, model, params, batch, config, autocast)
                    with time_limit(limit):
                        step()  # compiles forward and backward
                        sync(device)
                finally:
                    run.compile_s = time.perf_counter() - start
                    if budget_left is not None:
                        budget_left -= run.compile_s
                say(f"bench: {label} compiled in {run.compile_s:.1f} s")
            else:
                step = make_step(loss_fn, model, params, batch, config, autocast)
            step()  # warm-up
            sync(device)
            run.peak_mem_mb = peak_mb(step, device)
            run.step = step
            run.times = []
            say(f"bench: {label} ready (peak {run.peak_mem_mb} MiB)")
        except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
            run.error = error_text(exc)
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
                    sync(device)
                    start = time.perf_counter()
                    for _ in range(st.steps):
                        run.step()
                    sync(device)
                    run.times.append((time.perf_counter() - start) / st.steps)
                except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
                    run.error, run.step, run.times = error_text(exc), None, None
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
        result["adapt_latency_ms"] = latency(model, base, shopper, sizes.inner_steps,
                                              st.latency_repeats, device, autocast)
        result["adapt_latency_ms"]["threads"] = torch.get_num_threads()
        if device.type == "cpu":  # the hybrid model's cached serving path (chapter 7)
            result["adapt_latency_ms"]["hybrid"] = hybrid_latency(
                sizes, sizes.inner_steps, st.latency_repeats)
    finally:
        torch.set_num_threads(threads)
    say(f"bench: one new shopper p50 {result['adapt_latency_ms'].get('p50')} ms")
    save(complete=True)
    return result


def summary(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Speed-ups and peak-memory ratios of vmap/compiled over the reference loop.

    The reference is ``loop`` with the same order and ``all_dense`` (for ``all_dense`` and
    ``all_sparse``: :func:`meta.meta_loss_reference` adapting every parameter) or ``head``.
    Keys: ``{impl}_{order}_{adapt}_speedup`` (median tasks per second over the loop's),
    ``..._speedup_best`` (best repeats) and ``..._mem_ratio`` (peak memory over the loop's).

    Parameters
    ----------
    rows : list of dict
        The ``results`` rows of :func:`run_bench`.

    Returns
    -------
    dict

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
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

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
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
    hyb = lat.get("hybrid") or {}
    if hyb:
        prof = hyb.get("profile", {})
        lines.append(f"hybrid model, one new shopper (adapt + score, profile cached): p50 "
                     f"{num(hyb.get('p50'), '.2f')} ms, p99 {num(hyb.get('p99'), '.2f')} ms; "
                     f"profile once per shopper: p50 {num(prof.get('p50'), '.2f')} ms")
    lines.append(f"checks (relative max gradient difference): {result['checks']}")
    return "\n".join(lines)
