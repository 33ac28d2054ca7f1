"""Coverage benchmark: on how many models does a 25% structured prune give a runnable, actually
smaller model? amgp-fx (dependency groups + physical surgery, checked with the mask oracle) against
torch-pruning's MetaPruner with magnitude importance, on the reference models, the
third-party-style fixtures under tests/fixtures and the fixtures of issue 13: the patterns that used to
break a shrink (tests/fixtures/shrink_patterns.py: unsqueeze + cat, shared parameters, sequence-first
attention, GRU/LSTM, a padded-sequence GRU), the DCN model whose x0 group spans six segments
(segment_models.py), the capsule multi-interest model (capsule_models.py) and the op families that
got a rule (tests/op_family_models.py: __and__, tanh_/unsqueeze_, softmax.int + numpy_T, glu, gru/lstm).
Dict and KeyedJaggedTensor inputs are the 3p:fuxictr_dict_dnn and 3p:torchrec_dlrm fixtures.

amgp-fx keeps the first 75% of every prunable group, split over a group's segments as the planner
does (never a member tensor emptied); a run that leaves any parameter with a zero-size dim fails.

    python tools/bench_prune_coverage.py --out docs/results/prune_coverage.json

Each torch-pruning attempt runs in a child process with a time limit.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def _cases() -> dict:
    from amgp_fx import models
    from fixtures import shrink_patterns
    from fixtures.thirdparty import FIXTURES

    cases = {f"ref:{n}": (lambda n=n: (lambda m: (m, m.example_inputs(4)))(models.build_model(n, "small")))
             for n in models.MODEL_NAMES}
    cases.update({f"3p:{n}": f for n, f in FIXTURES.items()})
    cases.update({f"pattern:{n}": (lambda n=n: shrink_patterns.make_fixture(n)) for n in shrink_patterns.MODELS})
    cases.update(_issue13_cases())
    return cases


ISSUE13_FAMILIES = ("mask_and", "in_place", "softmax_transpose", "glu", "gru_lstm", "lstm_bidirectional")


def _issue13_cases() -> dict:
    """The DCN segment model, the capsule model and the op families of issue 13 (the patterns are above)."""
    from fixtures.capsule_models import capsule_factory
    from fixtures.segment_models import dcn_factory
    from op_family_models import FAMILIES

    cases = {"segment:dcn_concat": dcn_factory, "capsule:capsule_multi_interest": capsule_factory}
    cases.update({f"family:{n}": FAMILIES[n] for n in ISSUE13_FAMILIES})
    return cases


def _keep_first(group, fraction: float) -> list[int]:
    """The first ``fraction`` of the group's channels, split over its segments as the planner would
    (so a concatenated group keeps part of every table instead of emptying the last ones)."""
    from amgp_fx.segments import group_segments, keep_channels, resolve_policy

    segments = group_segments(group)
    order = -torch.arange(group.size, dtype=torch.float32)  # earlier channels score higher
    return keep_channels(order, max(1, int(group.size * fraction)), segments,
                         resolve_policy("auto", group, segments))


def _zero_size(model) -> list[str]:
    return [f"{n} {tuple(p.shape)}" for n, p in model.named_parameters() if 0 in p.shape]


def _param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _outputs(value):
    from torch.utils import _pytree as pytree

    return [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def run_amgp(name: str) -> dict:
    import amgp_fx
    from amgp_fx.testing import assert_mask_oracle

    factory = _cases()[name]
    torch.manual_seed(0)
    model, args = factory()
    before = _param_count(model)
    start = time.perf_counter()
    try:
        graph = amgp_fx.analyze(model, args)
        keep = {g.id: _keep_first(g, 0.75) for g in graph.prunable_groups()}
        if not keep:
            return {"ok": False, "why": "no prunable group", "seconds": time.perf_counter() - start}
        amgp_fx.shrink_(graph, keep)
        graph.module.eval()
        with torch.no_grad():
            _outputs(graph.module(*args))
        after = _param_count(model)
        if _zero_size(model):
            return {"ok": False, "why": f"zero-size dims: {_zero_size(model)}"[:300],
                    "seconds": time.perf_counter() - start}

        def fresh():
            torch.manual_seed(0)
            return factory()

        assert_mask_oracle(fresh, fraction=0.75)
        return {"ok": after < before, "params_before": before, "params_after": after,
                "seconds": time.perf_counter() - start, "mask_oracle": True}
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "why": f"{type(e).__name__}: {e}"[:300], "seconds": time.perf_counter() - start}


def _tp_worker(name: str, queue) -> None:
    import torch_pruning as tp

    torch.manual_seed(0)
    model, args = _cases()[name]()
    before = _param_count(model)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            reference = _outputs(model.eval()(*args))
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
        pruner = tp.pruner.MetaPruner(model, args, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=0.25, ignored_layers=last)
        pruner.step()
        with torch.no_grad():
            outputs = _outputs(model.eval()(*args))
        same_shape = [o.shape for o in outputs] == [r.shape for r in reference]
        after, empty = _param_count(model), _zero_size(model)
        why = None if same_shape else "output shape changed"
        why = why or (f"zero-size dims: {empty}"[:300] if empty else None)
        queue.put({"ok": same_shape and not empty and after < before, "params_before": before, "params_after": after,
                   "seconds": time.perf_counter() - start, "why": why or (None if after < before else "not smaller")})
    except Exception as e:  # noqa: BLE001
        queue.put({"ok": False, "why": f"{type(e).__name__}: {e}"[:300], "seconds": time.perf_counter() - start})


def run_torch_pruning(name: str, limit_s: float) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_tp_worker, args=(name, queue))
    process.start()
    process.join(limit_s)
    if process.is_alive():
        process.kill()
        return {"ok": False, "why": f"did not finish within {limit_s:.0f} s"}
    return queue.get() if not queue.empty() else {"ok": False, "why": "crashed"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--tp-limit", type=float, default=60.0)
    parser.add_argument("--only", nargs="*", default=None, help="model names (e.g. pattern:dense_columns) to run")
    args = parser.parse_args(argv)
    records = []
    for name in _cases():
        if args.only and name not in args.only:
            continue
        record = {"model": name, "amgp": run_amgp(name), "torch_pruning": run_torch_pruning(name, args.tp_limit),
                  "ratio": 0.25, "torch": torch.__version__, "command": "python " + " ".join(sys.argv)}
        records.append(record)
        print(f"{name:40s} amgp={record['amgp']['ok']!s:5} tp={record['torch_pruning']['ok']!s:5} "
              f"{record['torch_pruning'].get('why') or ''}"[:160], flush=True)
    ok_amgp = sum(r["amgp"]["ok"] for r in records)
    ok_tp = sum(r["torch_pruning"]["ok"] for r in records)
    print(f"runnable and smaller after a 25% prune: amgp-fx {ok_amgp}/{len(records)}, torch-pruning {ok_tp}/{len(records)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": {"models": len(records), "amgp_ok": ok_amgp, "torch_pruning_ok": ok_tp},
                       "records": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
