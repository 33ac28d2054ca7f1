"""amgp-fx: alternate model growth and pruning for recommendation models.

Public names are loaded lazily so that ``import amgp_fx`` stays light (no onnxruntime, no CUDA).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it, grouped by pipeline stage
_EXPORTS = {
    # trace / groups / importance / surgery
    "trace": "amgp_fx.tracing",
    "TracedModel": "amgp_fx.tracing",
    "analyze": "amgp_fx.groups.analyze",
    "DependencyGraph": "amgp_fx.groups.analyze",
    "Group": "amgp_fx.groups.model",
    "RuleRegistry": "amgp_fx.groups.registry",
    "default_registry": "amgp_fx.groups.registry",
    "score": "amgp_fx.importance",
    "shrink_": "amgp_fx.surgery",
    "grow_": "amgp_fx.surgery",
    "SurgeryRecord": "amgp_fx.surgery",
    # export
    "export_onnx": "amgp_fx.export",
    "ExportReport": "amgp_fx.export",
    "ExportError": "amgp_fx.export",
    "ParityError": "amgp_fx.export",
    "ExportPass": "amgp_fx.passes",
    "PassRegistry": "amgp_fx.passes",
    "default_passes": "amgp_fx.passes",
    "apply_passes": "amgp_fx.passes",
    # bench
    "benchmark_onnx": "amgp_fx.bench",
    "benchmark_torch": "amgp_fx.bench",
    "count_forward_flops": "amgp_fx.bench",
    "make_ort_session": "amgp_fx.bench",
    "LatencyRecord": "amgp_fx.latency_report",
    "format_table": "amgp_fx.latency_report",
    "save_records": "amgp_fx.latency_report",
    "load_records": "amgp_fx.latency_report",
    "plot_latency": "amgp_fx.latency_report",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'amgp_fx' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
