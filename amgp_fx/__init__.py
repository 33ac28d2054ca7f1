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
    "consumer_inputs": "amgp_fx.activations",
    "shrink_": "amgp_fx.surgery",
    "grow_": "amgp_fx.surgery",
    "SurgeryRecord": "amgp_fx.surgery",
    # schedule / flops / amgp training
    "AmgpConfig": "amgp_fx.schedule",
    "AmgpSchedule": "amgp_fx.schedule",
    "Phase": "amgp_fx.schedule",
    "RECIPES": "amgp_fx.schedule",
    "DEFAULT_RECIPE": "amgp_fx.schedule",
    "count_training_flops": "amgp_fx.flops",
    "TrainingFlops": "amgp_fx.flops",
    "graph_step_flops": "amgp_fx.flops",
    "AmgpHook": "amgp_fx.amgp",
    "AmgpError": "amgp_fx.amgp",
    "select_groups": "amgp_fx.amgp",
    # data / train
    "TrainConfig": "amgp_fx.config",
    "SyntheticConfig": "amgp_fx.config",
    "Batch": "amgp_fx.data",
    "DatasetSpec": "amgp_fx.data",
    "SyntheticCriteo": "amgp_fx.data",
    "read_criteo_tsv": "amgp_fx.data",
    "DataFormatError": "amgp_fx.data",
    "evaluate": "amgp_fx.train",
    "DistEnv": "amgp_fx.distributed",
    "DDPForward": "amgp_fx.distributed",
    "init_from_env": "amgp_fx.distributed",
    "auc": "amgp_fx.metrics",
    "logloss": "amgp_fx.metrics",
    "save_checkpoint": "amgp_fx.checkpoint",
    "load_checkpoint": "amgp_fx.checkpoint",
    # model files and one-shot pruning
    "load_model": "amgp_fx.model_io",
    "save_pt2": "amgp_fx.model_io",
    "PruningPlan": "amgp_fx.pruning_plan",
    "plan_pruning": "amgp_fx.pruning_plan",
    "apply_plan": "amgp_fx.pruning_plan",
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
    "DeviceConstants": "amgp_fx.latency_model",
    "calibrate": "amgp_fx.latency_model",
    "predict_latency": "amgp_fx.latency_model",
    "predicted_speedup": "amgp_fx.latency_model",
    "PRECISIONS": "amgp_fx.export_precision",
    "PrecisionReport": "amgp_fx.export_precision",
    "convert_precision": "amgp_fx.export_precision",
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
