"""Latency benchmarks: ONNX Runtime (CUDA with IOBinding and optional CUDA graphs, or CPU) and PyTorch.

Each function runs ``warmup`` untimed calls, then ``iters`` timed calls per batch size, and returns one
:class:`LatencyRecord` per batch size with p50/p90/p99 latency (ms) and samples/s (batch / p50, as the tables show it).

- ONNX Runtime on CUDA binds inputs and outputs as device ``OrtValue`` s once (IOBinding), so a timed
  call is compute only, as for PyTorch with inputs already on the GPU; ``Run`` synchronises the
  stream before it returns. CUDA graphs need static shapes: one session per batch size, with the
  symbolic batch dim fixed by a free-dimension override (or a static export passed in ``path``).
- PyTorch on CUDA is timed with CUDA events around each call, synchronised after each (latency, not
  pipelined throughput, like ORT's ``Run``); on CPU with ``perf_counter``.
- Without onnxruntime-gpu or a GPU, ``provider="cuda"`` falls back to the CPU provider (logged).

Dim letters: B batch. onnxruntime is imported inside the functions only.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(8, 2)
    >>> records = benchmark_torch(model, lambda b: (torch.randn(b, 8),), [4], device="cpu", warmup=1, iters=3)
    >>> records[0].runtime, records[0].batch_size, records[0].flops, records[0].p50_ms <= records[0].p99_ms
    ('torch-eager', 4, 128, True)
"""
from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import platform
import shlex
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from amgp_fx.devices import module_device, to_device
from amgp_fx.input_tree import as_args, feed_order
from amgp_fx.latency_report import RUNTIMES, LatencyRecord
from amgp_fx.passes.inference_mode import eval_mode, inference_graph

logger = logging.getLogger(__name__)

__all__ = ["OPT_LEVELS", "RUNTIMES", "LatencyRecord", "benchmark_onnx", "benchmark_torch", "count_forward_flops",
           "cuda_provider_available", "device_name", "make_ort_session", "tf32_matmuls"]

InputsFactory = Callable[[int], Any]  # B -> forward's positional arguments (tensors, dicts, KJT-like pytrees)
FlopsSource = Callable[[int], int] | Mapping[int, int] | None


def _load_onnxruntime(cuda: bool):
    """Import onnxruntime with errors-only logging; for CUDA, ``preload_dlls`` (onnxruntime-gpu >= 1.21)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    if cuda and hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()) as captured:  # it prints what it could not load
            ort.preload_dlls()
        printed = captured.getvalue().strip()
        if printed:
            level = logging.WARNING if "fail" in printed.lower() else logging.DEBUG
            logger.log(level, "onnxruntime.preload_dlls: %s", printed)
    return ort


def cuda_provider_available() -> bool:
    """True when onnxruntime has the CUDA execution provider (onnxruntime-gpu) and a GPU is visible."""
    try:
        ort = _load_onnxruntime(cuda=torch.cuda.is_available())
    except ImportError:
        return False
    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


#: ``--ort-opt-level`` names -> onnxruntime.GraphOptimizationLevel members; "all" is ORT's own default
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


def make_ort_session(path: str | os.PathLike, provider: str = "cpu", *, use_tf32: bool = False,
                     cuda_graph: bool = False, device_id: int = 0, fixed_dims: dict[str, int] | None = None,
                     opt_level: str = "all", profile_prefix: str | os.PathLike | None = None,
                     tunable_ops: bool = False):
    """An ``onnxruntime.InferenceSession`` on ``provider`` ("cpu" or "cuda").

    Args:
        path: the .onnx file (external data is found beside it).
        provider: "cpu" or "cuda" (CUDA execution provider, CPU for the nodes it lacks).
        use_tf32: CUDA only: the CUDA EP option ``use_tf32`` (ORT's default is on; ours is off).
        cuda_graph: CUDA only: ``enable_cuda_graph`` (needs static shapes: pass ``fixed_dims``).
        fixed_dims: symbolic dim name -> size, e.g. ``{"batch": 4096}`` (free dimension overrides).
        opt_level: graph optimisation level, one of :data:`OPT_LEVELS` (default "all", ORT's default:
            constant folding, node fusions and layout changes).
        profile_prefix: turn on ORT's profiler; ``session.end_profiling()`` then writes a Chrome
            trace (one event per node run, with its op type) named from this prefix.
        tunable_ops: CUDA only: ORT's TunableOp (``tunable_op_enable`` and ``tunable_op_tuning_enable``),
            which times candidate kernels of the ops that support it (GEMMs) on first use and keeps
            the fastest, as torch's cuBLAS heuristics may pick another than ORT's defaults.

    Raises:
        ValueError: unknown provider or optimisation level.
        RuntimeError: the CUDA provider is missing (install onnxruntime-gpu) or failed to start.
    """
    if provider not in ("cpu", "cuda"):
        raise ValueError(f"provider must be 'cpu' or 'cuda', got {provider!r}")
    if opt_level not in OPT_LEVELS:
        raise ValueError(f"opt_level must be one of {', '.join(OPT_LEVELS)}, got {opt_level!r}")
    ort = _load_onnxruntime(cuda=provider == "cuda")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt_level])
    for name, size in (fixed_dims or {}).items():
        options.add_free_dimension_override_by_name(name, int(size))
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if provider == "cpu":
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: {ort.get_available_providers()}). "
            "Install onnxruntime-gpu built for your CUDA major version (docs/onnx.md), or use provider='cpu'."
        )
    cuda_options = {"device_id": str(device_id), "use_tf32": "1" if use_tf32 else "0"}
    if cuda_graph:
        cuda_options["enable_cuda_graph"] = "1"
    if tunable_ops:
        cuda_options.update(tunable_op_enable="1", tunable_op_tuning_enable="1")
    session = ort.InferenceSession(
        str(path), options, providers=[("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
    )
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"onnxruntime could not start the CUDA provider (got {session.get_providers()}); "
                           "check that onnxruntime-gpu matches the CUDA and cuDNN libraries of torch")
    return session


def _default_command() -> str:
    return shlex.join([os.path.basename(sys.executable), *sys.argv])


def device_name(device: str | torch.device = "cpu") -> str:
    """GPU name (``torch.cuda.get_device_name``) or the CPU model from /proc/cpuinfo."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _inference_module(model: torch.nn.Module) -> torch.nn.Module:
    """``model``, or for a torch.export GraphModule an eval-literal copy (dropout/batch-norm flags off)."""
    return inference_graph(model)[0] if isinstance(model, torch.fx.GraphModule) else model


def count_forward_flops(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """Forward FLOPs of one call (matmuls, convs, attention; gathers count 0), in eval mode.

    Runs on fake tensors (shapes only, no compute), so a 65536 batch costs nothing; falls back to a
    real forward when the model has data-dependent ops that fake tensors cannot run. ``inputs`` go to
    the model's device first.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = _inference_module(model)
    inputs = to_device(inputs, module_device(model))  # callers may build inputs on the CPU for a GPU model
    with eval_mode(model), torch.no_grad():
        try:
            with FakeTensorMode(allow_non_fake_inputs=True) as fake_mode:
                fake_inputs = [fake_mode.from_tensor(x) for x in inputs]
                with FlopCounterMode(display=False) as counter:
                    model(*fake_inputs)
        except Exception as error:  # noqa: BLE001 - data-dependent ops: count on real tensors instead
            logger.debug("fake-tensor FLOP count failed (%s); counting on real tensors", error)
            with FlopCounterMode(display=False) as counter:
                model(*inputs)
    return int(counter.get_total_flops())


def _flops_for(flops: FlopsSource, batch_size: int) -> int | None:
    if flops is None:
        return None
    value = flops(batch_size) if callable(flops) else flops.get(batch_size)
    return None if value is None else int(value)


def _summarise(times_ms: Sequence[float], batch_size: int, **fields) -> LatencyRecord:
    times = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(times, [50, 90, 99]))
    return LatencyRecord(batch_size=batch_size, p50_ms=p50, p90_ms=p90, p99_ms=p99,
                         samples_per_s=batch_size / (p50 / 1e3) if p50 > 0 else float("nan"), **fields)


def _check_counts(warmup: int, iters: int) -> None:
    if warmup < 0 or iters < 1:
        raise ValueError(f"need warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")


def _onnx_header(path) -> tuple[set[str], dict[str, str]]:
    """The symbolic name of dim 0 of the first input (``batch``; nothing for a static model) and the
    file's metadata (where the export records each input's pytree path)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return ({dims[0].dim_param} if dims and dims[0].dim_param else set(),
            {entry.key: entry.value for entry in model.metadata_props})



def _output_shape(declared, batch_size: int, batch_names: set[str]) -> list[int]:
    """ORT's declared output shape with the batch dim (dim 0, or any dim named like an input's) filled in."""
    shape = [batch_size if not isinstance(d, int) and (i == 0 or d in batch_names) else d
             for i, d in enumerate(declared)]
    if not all(isinstance(d, int) for d in shape):
        raise ValueError(f"output shape {declared} has symbolic dims besides the batch; export with a static shape")
    return shape


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def ort_feeds(session, inputs, metadata: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """``{ONNX input name: array}`` for ``inputs`` (positional arguments, any pytree of tensors):
    each input gets the leaf at the pytree path the export recorded, else leaves in order."""
    names = [value.name for value in session.get_inputs()]
    leaves = feed_order(names, inputs, metadata)
    return {name: np.ascontiguousarray(x.detach().cpu().numpy()) for name, x in zip(names, leaves)}


def _time_ort(session, inputs, batch_size, provider, io_binding, batch_names, warmup, iters,
              metadata: Mapping[str, str] | None = None) -> list[float]:
    ort = _load_onnxruntime(cuda=provider == "cuda")
    feeds = ort_feeds(session, inputs, metadata)
    names, arrays = list(feeds), list(feeds.values())
    if io_binding:  # on CPU too, so the binding path is exercised without a GPU
        device = "cuda" if provider == "cuda" else "cpu"
        binding = session.io_binding()
        keep_alive = []  # the bound OrtValues must outlive every run (CUDA graphs replay their addresses)
        for name, array in zip(names, arrays):
            value = ort.OrtValue.ortvalue_from_numpy(array, device, 0)
            binding.bind_ortvalue_input(name, value)
            keep_alive.append(value)
        for output in session.get_outputs():
            shape = _output_shape(output.shape, batch_size, batch_names)
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, _NUMPY_TYPES[output.type], device, 0)
            binding.bind_ortvalue_output(output.name, value)
            keep_alive.append(value)

        def call():
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
    else:
        def call():
            session.run(None, feeds)

    for _ in range(warmup):
        call()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def benchmark_onnx(
    path: str | os.PathLike | Mapping[int, str | os.PathLike],
    inputs_factory: InputsFactory,
    batch_sizes: Sequence[int],
    *,
    provider: str = "cuda",
    io_binding: bool = True,
    cuda_graph: bool = False,
    use_tf32: bool = False,
    opt_level: str = "all",
    warmup: int = 10,
    iters: int = 100,
    model: str = "",
    variant: str = "",
    flops: FlopsSource = None,
    command: str | None = None,
) -> list[LatencyRecord]:
    """Time an ONNX model with ONNX Runtime at each batch size.

    Args:
        path: the .onnx file (dynamic batch), or ``{batch_size: static .onnx}`` for CUDA graphs.
        inputs_factory: ``batch_size -> (dense (B, 13), sparse (B, 26))``-like arguments of forward, in the
            structure the model was exported with (dicts, KeyedJaggedTensor-like pytrees: each ONNX
            input gets the tensor at the path recorded in the file's metadata).
        batch_sizes: e.g. ``[256, 1024, 4096]``.
        provider: "cuda" (falls back to "cpu", logged, without onnxruntime-gpu or a GPU) or "cpu".
        io_binding: bind inputs/outputs once as OrtValues on the provider's device (no host copies in
            the timed call); False: ``session.run`` with numpy feeds (CUDA then includes the copies).
        cuda_graph: CUDA: capture and replay a CUDA graph (one session per batch size); skipped on CPU.
        use_tf32: CUDA EP option ``use_tf32`` (ORT's own default is on; off here to match fp32 PyTorch).
        opt_level: ORT graph optimisation level (:data:`OPT_LEVELS`; default "all").
        warmup, iters: untimed and timed calls per batch size.
        model, variant, flops, command: copied into the records (flops: callable or mapping by B).

    Returns:
        One :class:`LatencyRecord` per batch size, runtime ``ort-cuda``, ``ort-cuda-graph`` or ``ort-cpu``.
    """
    _check_counts(warmup, iters)
    if provider not in ("cuda", "cpu"):
        raise ValueError(f"provider must be 'cuda' or 'cpu', got {provider!r}")
    if provider == "cuda" and not cuda_provider_available():
        logger.warning("onnxruntime CUDA provider or GPU not available; benchmarking on the CPU provider")
        provider = "cpu"
    if cuda_graph and provider != "cuda":
        logger.warning("CUDA graphs need the CUDA provider; skipping the ort-cuda-graph runs")
        return []
    if cuda_graph and not io_binding:
        raise ValueError("cuda_graph=True needs io_binding=True (a graph replays fixed device addresses)")
    if cuda_graph:
        warmup = max(warmup, 3)  # ORT captures the graph after a couple of regular runs
    runtime = "ort-cuda-graph" if cuda_graph else f"ort-{provider}"
    device = device_name("cuda" if provider == "cuda" else "cpu")
    command = _default_command() if command is None else command
    static_paths = path if isinstance(path, Mapping) else None
    session = None
    records = []
    for batch_size in batch_sizes:
        file = static_paths[batch_size] if static_paths is not None else path
        batch_names, metadata = _onnx_header(file)
        if cuda_graph or static_paths is not None:
            session = make_ort_session(file, provider, use_tf32=use_tf32, cuda_graph=cuda_graph, opt_level=opt_level,
                                       fixed_dims={name: batch_size for name in batch_names})
        elif session is None:
            session = make_ort_session(file, provider, use_tf32=use_tf32, opt_level=opt_level)
        inputs = as_args(inputs_factory(batch_size))
        times = _time_ort(session, inputs, batch_size, provider, io_binding, batch_names, warmup, iters, metadata)
        records.append(_summarise(times, batch_size, model=model, variant=variant, runtime=runtime,
                                  flops=_flops_for(flops, batch_size), device=device, command=command))
        logger.info("%s %s %s B=%d p50 %.3f ms", model, variant, runtime, batch_size, records[-1].p50_ms)
        if cuda_graph or static_paths is not None:
            session = None
            gc.collect()
    return records


def benchmark_torch(
    model: torch.nn.Module,
    inputs_factory: InputsFactory,
    batch_sizes: Sequence[int],
    *,
    mode: str = "eager",
    device: str | torch.device | None = None,
    warmup: int = 10,
    iters: int = 100,
    model_name: str = "",
    variant: str = "",
    flops: FlopsSource | bool = True,
    command: str | None = None,
    compile_options: Mapping[str, Any] | None = None,
    tf32: bool | None = None,
) -> list[LatencyRecord]:
    """Time ``model`` in PyTorch (eval mode, no grad) at each batch size.

    Args:
        model: moved to ``device`` in place (as ``nn.Module.to`` does); run in eval mode, flags restored.
        inputs_factory: ``batch_size -> input tensors``; moved to ``device``.
        batch_sizes: e.g. ``[256, 1024]``.
        mode: "eager" or "compile" (``torch.compile``, default mode, automatic dynamic shapes; compiling
            happens in the warm-up calls).
        device: default CUDA when available, else CPU.
        flops: True: count forward FLOPs at each batch size with FlopCounterMode; False/None: none;
            or a callable/mapping by batch size.
        compile_options: keyword arguments of ``torch.compile``, e.g. ``{"dynamic": True}`` (one
            compile for all batch sizes instead of a static one and then a dynamic one).
        tf32: TF32 matmuls and convolutions on (True) or off (False) while timing, as ORT's
            ``use_tf32`` (:func:`tf32_matmuls`); None leaves torch's settings as they are.

    Returns:
        One :class:`LatencyRecord` per batch size, runtime ``torch-eager`` or ``torch-compile``.
    """
    _check_counts(warmup, iters)
    if mode not in ("eager", "compile"):
        raise ValueError(f"mode must be 'eager' or 'compile', got {mode!r}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = _inference_module(model.to(device))
    command = _default_command() if command is None else command
    records = []
    with eval_mode(model), torch.no_grad(), tf32_matmuls(tf32):
        if mode == "compile":
            torch._dynamo.reset()  # models of one class share forward's code object and its recompile limit
        function = torch.compile(model, **dict(compile_options or {})) if mode == "compile" else model
        for batch_size in batch_sizes:
            inputs = tuple(to_device(inputs_factory(batch_size), device))
            if flops is True:
                batch_flops = count_forward_flops(model, inputs)
            else:
                batch_flops = _flops_for(flops or None, batch_size)
            times = _time_torch(function, inputs, device, warmup, iters)
            records.append(_summarise(times, batch_size, model=model_name, variant=variant,
                                      runtime=f"torch-{mode}", flops=batch_flops,
                                      device=device_name(device), command=command))
            logger.info("%s %s torch-%s B=%d p50 %.3f ms", model_name, variant, mode, batch_size,
                        records[-1].p50_ms)
    return records


@contextlib.contextmanager
def tf32_matmuls(enabled: bool | None):
    """TF32 for torch's CUDA matmuls and cuDNN convolutions set to ``enabled`` inside, restored after
    (None: unchanged), so torch and ORT (``use_tf32``) run fp32 GEMMs the same way."""
    if enabled is None:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def _time_torch(function, inputs, device: torch.device, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        function(*inputs)
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            function(*inputs)
            times.append((time.perf_counter() - start) * 1e3)
        return times
    torch.cuda.synchronize(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        function(*inputs)
        end.record()
        end.synchronize()  # one call at a time, as ORT's Run: latency, not pipelined throughput
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) for start, end in events]
