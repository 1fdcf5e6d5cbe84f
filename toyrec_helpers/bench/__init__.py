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

The JSON result carries ``"format": "toyrec-bench"`` and a ``version``
(:data:`toyrec_helpers.bench.run.VERSION`); files of an older version are brought to the
current one by ``python -m toyrec_helpers.bench.convert FILE ...``, which keeps every
measurement and records the conversion in ``converted_from``.

Modules: :mod:`~toyrec_helpers.bench.problem` (synthetic problems),
:mod:`~toyrec_helpers.bench.measure` (one configuration's step, memory, checks, latency),
:mod:`~toyrec_helpers.bench.run` (the run, its JSON and table),
:mod:`~toyrec_helpers.bench.convert` (older JSON files to the current format).

Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
"""

from __future__ import annotations

from toyrec_helpers.bench.measure import cpu_peak_bytes, device_name
from toyrec_helpers.bench.problem import (
    ADAPTS,
    IMPLS,
    LATENCY_K,
    ORDERS,
    SIZES,
    BenchSizes,
    make_problem,
)
from toyrec_helpers.bench.run import FORMAT, VERSION, format_results, run_bench, summary

__all__ = [
    "ADAPTS", "FORMAT", "IMPLS", "LATENCY_K", "ORDERS", "SIZES", "VERSION", "BenchSizes",
    "cpu_peak_bytes", "device_name", "format_results", "make_problem", "run_bench", "summary"
]

