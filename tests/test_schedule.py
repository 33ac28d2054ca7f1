"""AMGP schedule: the step -> phase function, widths over steps, validation and the JSON round trip."""
import json

import pytest

from amgp_fx.schedule import (RECIPES, AmgpConfig, AmgpSchedule, FinalState, Method, PruneScope,
                              schedule_config_from_dict)


def _names(schedule):
    return [(p.name, p.cycle, p.start, p.end, p.plan) for p in schedule.phases()]


def test_amgp_phases_follow_the_configured_lengths():
    schedule = AmgpSchedule(total_steps=50, warmup_steps=5, cycles=2, pruned_steps=10, dense_steps=5)
    assert _names(schedule) == [("warmup", -1, 0, 5, -1), ("pruned", 0, 5, 15, 0), ("dense", 0, 15, 20, -1),
                                ("pruned", 1, 20, 30, 1), ("dense", 1, 30, 35, -1), ("final", 2, 35, 50, -1)]
    assert [schedule.phase_at(s).name for s in (0, 4, 5, 14, 15, 19, 20, 34, 35, 49, 200)] == [
        "warmup", "warmup", "pruned", "pruned", "dense", "dense", "pruned", "dense", "final", "final", "final"]
    assert schedule.pruned_share() == 20 / 50


def test_width_over_steps_matches_the_configuration():
    config = AmgpConfig(AmgpSchedule(40, warmup_steps=4, cycles=3, pruned_steps=8, dense_steps=4), ratio=0.25)
    widths = [config.width_at(step) for step in range(40)]
    expected = [1.0] * 4 + ([0.75] * 8 + [1.0] * 4) * 3
    assert widths == expected
    assert sum(w < 1 for w in widths) == 3 * 8


def test_compact_final_keeps_a_new_shrink_or_the_last_one():
    compact = AmgpSchedule(30, 2, 2, 8, 4, final="compact")
    assert compact.phases()[-1].plan == 2 and compact.phases()[-1].amount == 1.0  # re-pruned after the dense phase
    no_dense = AmgpSchedule(30, 2, 2, 8, 0, final="compact")
    assert no_dense.phases()[-1].plan == 1  # continues the last pruned phase without new surgery


def test_prune_only_ramps_up_cubically_and_never_grows():
    schedule = AmgpSchedule(100, 10, 4, 10, method="prune_only", final="compact")
    amounts = [p.amount for p in schedule.phases()]
    assert amounts == pytest.approx([0.0, 1 - 0.75 ** 3, 1 - 0.5 ** 3, 1 - 0.25 ** 3, 1.0, 1.0])
    plans = [schedule.phase_at(s).plan for s in range(100)]
    assert plans == sorted(plans), "prune-only plans only move forward"
    assert schedule.phase_at(99).plan == 3


def test_dense_never_prunes():
    schedule = AmgpSchedule(10, 0, 0, 0, 0, method="dense")
    assert all(not schedule.phase_at(s).pruned for s in range(10))


@pytest.mark.parametrize("kwargs, message", [
    (dict(total_steps=0), "total_steps must be a positive integer"),
    (dict(total_steps=10, warmup_steps=-1), "warmup_steps must be an integer >= 0"),
    (dict(total_steps=10, warmup_steps=2, cycles=2, pruned_steps=4, dense_steps=1), "phases need 12 steps"),
    (dict(total_steps=10, cycles=0, pruned_steps=0), "needs cycles >= 1 and pruned_steps >= 1"),
    (dict(total_steps=10, pruned_steps=2, method="prune_only", final="compact", dense_steps=1), "never grows"),
    (dict(total_steps=10, pruned_steps=2, method="prune_only"), "ends compact"),
    (dict(total_steps=10, pruned_steps=2, method="sometimes"), "method must be one of"),
    (dict(total_steps=10, pruned_steps=2, final="tiny"), "final must be one of"),
    (dict(total_steps=10, cycles=1, pruned_steps=5, dense_steps=5, final="compact"), "needs a final phase"),
    (dict(total_steps=10, cycles=1, pruned_steps=5, method="dense"), "prunes nothing"),
])
def test_schedule_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AmgpSchedule(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(ratio=1.0), r"ratio must be in \[0, 1\)"),
    (dict(ratio=0.95), "above max_layer_ratio"),
    (dict(criterion="magic"), "criterion must be one of"),
    (dict(round_to=0), "round_to must be an integer >= 1"),
    (dict(scope="layerwise"), "scope must be one of"),
    (dict(layer_ratios=(("top_mlp.*", 0.5),)), "needs scope='layer'"),
    (dict(scope="layer", layer_ratios=(("top_mlp.*", 0.99),)), "layer_ratios"),
    (dict(kinds=()), "kinds must name at least one group kind"),
    (dict(grow_init="zeros"), "grow_init must be one of"),
    (dict(optimizer_state="keep"), "optimizer_state must be one of"),
    (dict(fold_bias="yes"), "fold_bias must be true or false"),
    (dict(fold_bias=1), "fold_bias must be true or false"),
])
def test_config_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AmgpConfig(AmgpSchedule(10, 1, 1, 4), **kwargs)


def test_taylor_needs_a_warmup():
    with pytest.raises(ValueError, match="taylor.*warmup_steps >= 1"):
        AmgpConfig(AmgpSchedule(10, 0, 1, 4), criterion="taylor")


def test_layer_ratios_match_by_pattern():
    config = AmgpConfig(AmgpSchedule(10, 1, 1, 4), scope="layer", ratio=0.5,
                        layer_ratios=(("top_mlp.*", 0.25), ("g0", 0.75)))
    assert config.ratio_for(("g3", "top_mlp.0.0.weight[0]", "top_mlp.0.0.weight")) == 0.25
    assert config.ratio_for(("g0", "bottom_mlp.0.weight[0]")) == 0.75
    assert config.ratio_for(("g9", "other.weight[0]")) == 0.5
    assert config.width_at(3, ("g0",)) == 0.25


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_config_round_trip_through_json(recipe):
    config = AmgpConfig.from_recipe_name(recipe, total_steps=1000)
    text = json.dumps(config.to_dict())
    assert AmgpConfig.from_dict(json.loads(text)) == config
    assert schedule_config_from_dict(json.loads(text)) == config
    assert AmgpSchedule.from_dict(json.loads(json.dumps(config.schedule.to_dict()))) == config.schedule


def test_round_trip_keeps_every_field():
    config = AmgpConfig(AmgpSchedule(100, 10, 2, 20, 10, final="compact"), ratio=0.3, scope=PruneScope.LAYER,
                        layer_ratios=(("top_*", 0.6),), max_layer_ratio=0.8, groups=("g1", "top_mlp.*"),
                        kinds=("hidden", "embedding"), criterion="taylor", round_to=4, grow_init="fresh",
                        optimizer_state="reset", seed=3)
    again = AmgpConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.schedule.final is FinalState.COMPACT


def test_activation_and_fold_bias_round_trip_and_older_dicts_load_without_the_fold():
    config = AmgpConfig.from_recipe_name("amgp-half", 1000, criterion="activation", fold_bias=True)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["fold_bias"] is True and data["criterion"] == "activation" and data["version"] == 1
    again = AmgpConfig.from_dict(data)
    assert again == config and again.fold_bias is True
    older = {k: v for k, v in data.items() if k != "fold_bias"}  # written before the field existed
    assert AmgpConfig.from_dict(older).fold_bias is False


def test_from_dict_refuses_unknown_keys_types_and_versions():
    data = AmgpConfig.from_recipe_name("amgp-half", 100).to_dict()
    with pytest.raises(ValueError, match="unknown AmgpConfig keys"):
        AmgpConfig.from_dict({**data, "surprise": 1})
    with pytest.raises(ValueError, match="version 99 is not supported"):
        AmgpConfig.from_dict({**data, "version": 99})
    with pytest.raises(ValueError, match="unknown AMGP config type"):
        schedule_config_from_dict({**data, "type": "os.system"})


def test_recipes_resolve_for_any_length_and_accept_overrides():
    config = AmgpConfig.from_recipe_name("amgp-half", 1000, ratio=0.25, cycles=2, final="compact")
    assert config.ratio == 0.25 and config.schedule.cycles == 2 and config.schedule.final is FinalState.COMPACT
    prune_only = AmgpConfig.from_recipe_name("prune-only-half", 300)
    assert prune_only.schedule.method is Method.PRUNE_ONLY and prune_only.width_at(299) == 0.5
    with pytest.raises(ValueError, match="unknown AMGP recipe"):
        AmgpConfig.from_recipe_name("amgp-everything", 100)
    with pytest.raises(ValueError, match="unknown AmgpConfig fields"):
        AmgpConfig.from_recipe_name("amgp-half", 100, learning_rate=1.0)


def test_schedule_module_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys; import amgp_fx.schedule; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_grow_late_recipe_resolves_its_ramp_as_a_share_of_the_pruned_phase():
    config = AmgpConfig.from_recipe_name("amgp-grow-late", total_steps=1000)
    assert (config.schedule.warmup_steps, config.schedule.pruned_steps, config.schedule.cycles) == (0, 600, 1)
    assert config.preserve_growth and config.grow_ramp_steps == 150
    assert AmgpConfig.from_recipe_name("amgp-grow-late", 1000, grow_ramp_steps=10).grow_ramp_steps == 10
    assert config.width_at(599) == 0.5 and config.width_at(600) == 1.0


def test_grow_late_rewarm_recipe_resolves_its_rewarm_for_the_run_length():
    config = AmgpConfig.from_recipe_name("amgp-grow-late-rewarm", total_steps=1000)
    assert config.preserve_growth and config.grow_ramp_steps == 0
    assert config.schedule.pruned_steps == 600 and config.rewarm_steps == 60  # a tenth of the pruned phase
    assert AmgpConfig.from_recipe_name("amgp-grow-late-rewarm", total_steps=100).rewarm_steps == 6
    assert AmgpConfig.from_recipe_name("amgp-grow-late-rewarm", total_steps=1000, rewarm_steps=5).rewarm_steps == 5
