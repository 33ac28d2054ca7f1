"""The AMGP hook in the real training loop: widths follow the schedule, optimizer state follows
every switch, the run ends full or compact, FLOPs add up, resume inside a pruned phase is exact."""
import pytest
import torch

import amgp_fx
from amgp_fx import models
from amgp_fx.amgp import AmgpError, AmgpHook, dense_config, plan_keep, round_width, select_groups
from amgp_fx.config import SyntheticConfig, TrainConfig
from amgp_fx.data import SyntheticCriteo
from amgp_fx.flops import count_training_flops
from amgp_fx.metrics import read_metrics
from amgp_fx.schedule import AmgpConfig, AmgpSchedule
from amgp_fx.train import train

BATCH = 64
SCHEDULE = dict(total_steps=20, warmup_steps=3, cycles=2, pruned_steps=5, dense_steps=3)  # final: 17..19


@pytest.fixture(scope="module")
def rows():
    data = SyntheticCriteo(SyntheticConfig.from_preset("small"))
    return data.rows(0, 2048), data.rows(50_000, 50_512)


def _dcn(seed=0):
    torch.manual_seed(seed)
    model = models.build_model("dcn_v2", "small", deep_mlp=(64, 40))
    return model, amgp_fx.analyze(model, model.example_inputs(4))


def _run(graph, model, rows, config, *, hooks=(), steps=20, optimizer="adam", **train_kwargs):
    hook = AmgpHook(graph, config)
    result = train(model, rows[0], rows[1], TrainConfig(optimizer=optimizer, lr=1e-2, batch_size=BATCH, steps=steps,
                                                        log_every=5, **train_kwargs),
                   hooks=[*hooks, hook], forward=hook.forward, progress=False)
    return hook, result


class Recorder:
    """Runs after the AMGP hook: records widths and checks optimizer state shapes at every step."""

    def __init__(self, hook_holder):
        self.holder, self.sizes = hook_holder, []

    def on_step_start(self, ctx):
        hook = self.holder[0]
        self.sizes.append(hook.sizes())
        for optimizer in ctx.optimizers:
            for parameter, state in optimizer.state.items():
                for key, value in state.items():
                    if torch.is_tensor(value) and value.dim() > 0:
                        assert value.shape == parameter.shape, f"step {ctx.step}: {key} {value.shape}"
                if parameter.grad is not None and not parameter.grad.is_sparse:
                    assert parameter.grad.shape == parameter.shape


def _train_with_recorder(graph, model, rows, config, **kwargs):
    holder = []
    hook = AmgpHook(graph, config)
    holder.append(hook)
    recorder = Recorder(holder)
    result = train(model, rows[0], rows[1], TrainConfig(optimizer="adam", lr=1e-2, batch_size=BATCH, steps=20,
                                                        log_every=5, **kwargs),
                   hooks=[hook, recorder], forward=hook.forward, progress=False)
    return hook, recorder, result


def test_widths_follow_the_schedule_and_a_full_run_ends_with_the_original_shapes(rows, tmp_path):
    model, graph = _dcn()
    shapes = {name: p.shape for name, p in model.named_parameters()}
    config = AmgpConfig(AmgpSchedule(**SCHEDULE), ratio=0.5)
    hook, recorder, result = _train_with_recorder(graph, model, rows, config, metrics_path=str(tmp_path / "m.jsonl"))
    full = {g.id: g.full_size for g in hook.groups}
    assert sorted(full.values()) == [40, 64]
    half = {g.id: round_width(g.full_size * 0.5, g.full_size, 8) for g in hook.groups}  # 32 and 24 (20 -> 24)
    assert sorted(half.values()) == [24, 32]
    expected = [half if config.width_at(step) < 1 else full for step in range(20)]
    assert recorder.sizes == expected
    assert {name: p.shape for name, p in model.named_parameters()} == shapes
    assert result.metrics["auc"] > 0.5
    kinds = [r["kind"] for r in read_metrics(tmp_path / "m.jsonl")]
    assert kinds.count("amgp_phase") == 6 and kinds.count("amgp_surgery") == 4 and kinds.count("amgp_summary") == 1


def test_a_compact_run_ends_with_the_pruned_shapes(rows):
    model, graph = _dcn()
    config = AmgpConfig(AmgpSchedule(**SCHEDULE, final="compact"), ratio=0.5)
    hook, recorder, _ = _train_with_recorder(graph, model, rows, config)
    assert recorder.sizes[-1] == hook.sizes() and sorted(hook.sizes().values()) == [24, 32]
    assert model.deep[0].weight.shape == (32, 36) and model.deep[4].weight.shape == (24, 32)
    assert hook.forward(model, rows[1][:5]).shape == (5,)


def test_flops_add_up_per_phase_and_over_the_run(rows):
    model, graph = _dcn()
    config = AmgpConfig(AmgpSchedule(**SCHEDULE), ratio=0.5)
    optimizers_probe = torch.optim.Adam(model.parameters())
    full = count_training_flops(graph.module, graph.traced.args, batch_size=BATCH, optimizers=[optimizers_probe]).total
    hook, _ = _run(graph, model, rows, config)
    phases = hook.history
    assert [p["phase"] for p in phases] == ["warmup", "pruned", "dense", "pruned", "dense", "final"]
    assert sum(p["flops"] for p in phases) == hook.total_flops
    dense_steps = [p for p in phases if p["phase"] != "pruned"]
    assert all(p["flops_per_step"] == full for p in dense_steps)
    pruned = [p for p in phases if p["phase"] == "pruned"]
    assert all(0.3 * full < p["flops_per_step"] < 0.8 * full for p in pruned)
    assert hook.total_flops == 10 * full + sum(p["flops"] for p in pruned)
    assert all(p["wall_clock_s"] > 0 and p["peak_memory_bytes"] > 0 for p in phases)


def test_evaluation_time_stays_out_of_the_phases_wall_clock(rows, monkeypatch):
    """Evaluating every step must not make a phase look slower: runs at other eval cadences compare."""
    import time as time_module
    import amgp_fx.train as train_module

    real_evaluate = train_module.evaluate

    def slow_evaluate(*args, **kwargs):
        time_module.sleep(0.25)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", slow_evaluate)
    model, graph = _dcn()
    hook, result = _run(graph, model, rows, AmgpConfig(AmgpSchedule(**SCHEDULE), ratio=0.5), eval_every=1)
    evaluations = sum(r["kind"] == "eval" for r in result.history)
    assert evaluations == 20 and result.wall_clock_s > 0.25 * evaluations  # the sleeps did happen
    assert hook.summary()["wall_clock_s"] < 0.25 * 4  # but not inside the phases (20 of them sleep 5 s)


@pytest.mark.parametrize("policy", ["restore", "reset", "mean"])
def test_regrown_units_get_their_saved_moments_back_or_zeros(rows, policy):
    model, graph = _dcn()
    config = AmgpConfig(AmgpSchedule(**SCHEDULE), ratio=0.5, optimizer_state=policy)
    weight = model.deep[0].weight
    snapshots = {}

    class Before:  # runs before the AMGP hook
        def on_step_start(self, ctx):
            if ctx.step == 3:  # first pruned step: the full-size state before the shrink
                dense = ctx.optimizers.optimizers[0]
                snapshots["state"] = {k: v.clone() for k, v in dense.state[weight].items() if v.dim() > 0}

    class After:  # runs after the AMGP hook
        def on_step_start(self, ctx):
            if ctx.step == 3:
                snapshots["keep"] = list(hook_holder[0]._keeps[0][graph_group_id])
            if ctx.step == 8:  # first dense step: just grown back
                dense = ctx.optimizers.optimizers[0]
                removed = sorted(set(range(64)) - set(snapshots["keep"]))
                for key, before in snapshots["state"].items():
                    regrown = dense.state[weight][key][removed]
                    expected = before[removed] if policy == "restore" else torch.zeros_like(before[removed])
                    if policy == "mean" and key == "exp_avg_sq":  # the kept units' mean, per input column
                        kept = dense.state[weight][key][sorted(snapshots["keep"])]
                        expected = kept.mean(0, keepdim=True).expand_as(regrown)
                    torch.testing.assert_close(regrown, expected, rtol=0, atol=0)
                snapshots["checked"] = True

    hook = AmgpHook(graph, config)
    hook_holder = [hook]
    graph_group_id = next(g.id for g in hook.groups if g.full_size == 64)
    train(model, rows[0], None, TrainConfig(optimizer="adam", lr=1e-2, batch_size=BATCH, steps=20),
          hooks=[Before(), hook, After()], forward=hook.forward, progress=False)
    assert snapshots.get("checked")


@pytest.mark.parametrize("grow_init, lr_scale", [("restore", 1.0), ("fresh", 1.0), ("restore", 2.0)])
def test_resume_inside_a_pruned_phase_continues_identically(rows, tmp_path, grow_init, lr_scale):
    config = AmgpConfig(AmgpSchedule(**SCHEDULE), ratio=0.5, grow_init=grow_init, pruned_lr_scale=lr_scale)
    model, graph = _dcn()
    _run(graph, model, rows, config, optimizer="adagrad")
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    class Crash(RuntimeError):
        pass

    class StopAt:
        def on_step_start(self, ctx):
            if ctx.step == 13:
                raise Crash()

    model, graph = _dcn()
    with pytest.raises(Crash):  # checkpoint at step 12, inside the second pruned phase (11..15)
        _run(graph, model, rows, config, hooks=[StopAt()], optimizer="adagrad", checkpoint_dir=str(tmp_path),
             checkpoint_every=12)
    assert (tmp_path / "checkpoint_000000012.pt").exists()
    model, graph = _dcn(seed=123)  # a fresh full-size model with other values
    hook, _ = _run(graph, model, rows, config, hooks=[StopAtNothing()], optimizer="adagrad",
                   checkpoint_dir=str(tmp_path), checkpoint_every=12, resume=True)
    resumed = model.state_dict()
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=f"{key} differs after resume")
    assert [p["phase"] for p in hook.history] == ["warmup", "pruned", "dense", "pruned", "dense", "final"]
    assert [p["steps"] for p in hook.history] == [3, 5, 3, 5, 3, 1], "steps before and after the resume both count"


class StopAtNothing:
    """Keeps the hook list the same length as in the interrupted run."""

    def on_step_start(self, ctx):
        pass


def test_prune_only_shrinks_gradually_to_the_compact_model(rows):
    model, graph = _dcn()
    config = AmgpConfig(AmgpSchedule(20, 2, 3, 4, method="prune_only", final="compact"), ratio=0.5)
    hook, recorder, _ = _train_with_recorder(graph, model, rows, config)
    totals = [sum(sizes.values()) for sizes in recorder.sizes]
    assert totals == sorted(totals, reverse=True) and totals[0] == 104 and totals[-1] == 56
    assert len({t for t in totals}) >= 3, "several increments"
    assert all(s["action"] == "shrink" for s in hook.surgeries)


def test_dense_baseline_only_accounts(rows):
    model, graph = _dcn()
    shapes = [p.shape for p in model.parameters()]
    hook, _ = _run(graph, model, rows, dense_config(20))
    assert [p.shape for p in model.parameters()] == shapes and hook.surgeries == []
    assert len(hook.history) == 1 and hook.history[0]["steps"] == 20


def test_a_frozen_group_is_refused_with_its_reason():
    model = models.build_model("dlrm", "small")
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    frozen = graph.group("bottom_mlp.0.weight[1]")
    config = AmgpConfig(AmgpSchedule(10, 1, 1, 4), groups=(frozen.id,))
    with pytest.raises(AmgpError, match=rf"group {frozen.id} \(bottom_mlp.0.weight\[1\], .*\) cannot be pruned: "
                                        r"input 'dense'"):
        AmgpHook(graph, config)
    with pytest.raises(AmgpError, match="no group matches 'nowhere.*'"):
        select_groups(graph, ("nowhere.*",))
    chosen = select_groups(graph, ("top_mlp.*",))
    assert [g.name for g in chosen] == ["top_mlp.0.0.weight[0]", "top_mlp.0.2.weight[0]"]
    embedding = select_groups(graph, (), kinds=("embedding",))
    assert [g.kind for g in embedding] == ["embedding"]


def test_global_scope_caps_each_layer_and_rounds_to_the_multiple():
    model = torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 1))
    graph = amgp_fx.analyze(model, (torch.randn(4, 8),))
    groups = select_groups(graph)
    wide, narrow = groups
    # the wide layer's channels all score far below the narrow layer's, except in relative terms
    scores = {wide.id: torch.linspace(0.01, 1.0, 256), narrow.id: torch.full((64,), 0.5)}
    scores[narrow.id][:40] = 0.001  # 40 weak units in the narrow layer
    config = AmgpConfig(AmgpSchedule(10, 1, 1, 4), ratio=0.5, scope="global", max_layer_ratio=0.5)
    keep = plan_keep(graph, groups, config, 1.0, scores)
    kept = {group_id: len(positions) for group_id, positions in keep.items()}
    assert kept[narrow.id] == 32, "the cap keeps half of the narrow layer although 40 of its units are weak"
    assert kept[wide.id] % 8 == 0 and abs(kept[wide.id] + kept[narrow.id] - 160) <= 8
    assert keep[narrow.id] == sorted(keep[narrow.id]) and set(range(40, 64)) <= set(keep[narrow.id])


def test_a_schedule_of_another_length_is_refused(rows):
    model, graph = _dcn()
    with pytest.raises(AmgpError, match="schedule lasts 20 steps but training runs 12"):
        _run(graph, model, rows, AmgpConfig(AmgpSchedule(**SCHEDULE)), steps=12)


def test_device_check_treats_an_index_free_device_as_any_index():
    from amgp_fx.amgp import _same_device
    assert _same_device(torch.device("cuda:0"), torch.device("cuda"))
    assert not _same_device(torch.device("cuda:1"), torch.device("cuda:0"))
    assert not _same_device(torch.device("cpu"), torch.device("cuda"))


def test_a_taylor_prune_only_baseline_keeps_a_warmup_step_for_its_gradients():
    from amgp_fx.amgp import match_prune_only
    _, graph = _dcn()
    config = AmgpConfig(AmgpSchedule(**SCHEDULE), ratio=0.5, criterion="taylor")
    baseline = match_prune_only(graph, config, batch_size=BATCH, target_flops=1)  # below any schedule's cost
    assert baseline.schedule.warmup_steps == 1 and baseline.criterion == "taylor"
    assert match_prune_only(graph, AmgpConfig(AmgpSchedule(**SCHEDULE), ratio=0.5), batch_size=BATCH,
                            target_flops=1).schedule.warmup_steps == 0


@pytest.mark.parametrize("method", ["amgp", "prune_only"])
def test_pruned_phases_train_the_dense_optimizer_at_the_scaled_rate(rows, method):
    torch.manual_seed(0)
    model = models.build_model("dcn_v2", "small", deep_mlp=(64, 40))
    for module in model.modules():  # sparse gradients: the tables get their own optimizer
        if isinstance(module, torch.nn.Embedding):
            module.sparse = True
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    schedule = (AmgpSchedule(**SCHEDULE) if method == "amgp" else
                AmgpSchedule(20, warmup_steps=3, cycles=2, pruned_steps=4, method="prune_only", final="compact"))
    hook = AmgpHook(graph, AmgpConfig(schedule, ratio=0.5, pruned_lr_scale=3.0))
    seen = []

    class Rates:  # runs after the AMGP hook: the rates this step trains with
        def on_step_start(self, ctx):
            rates = {name: opt.param_groups[0]["lr"] for name, opt in zip(ctx.optimizers.names, ctx.optimizers)}
            seen.append((schedule.phase_at(int(ctx.step)).pruned, rates))

    train(model, rows[0], None, TrainConfig(optimizer="adam", lr=1e-2, sparse_optimizer="adagrad", sparse_lr=0.05,
                                            batch_size=BATCH, steps=20),
          hooks=[hook, Rates()], forward=hook.forward, progress=False)
    assert len(seen) == 20 and any(p for p, _ in seen) and any(not p for p, _ in seen)
    for pruned, rates in seen:
        assert rates["dense"] == pytest.approx(3e-2 if pruned else 1e-2)
        assert rates["sparse"] == 0.05, "embedding tables are not pruned: their rate stays"


def test_pruned_lr_scale_must_be_positive():
    with pytest.raises(ValueError, match="pruned_lr_scale"):
        AmgpConfig(AmgpSchedule(**SCHEDULE), pruned_lr_scale=0)
