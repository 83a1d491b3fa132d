"""Config tree: presets, overrides with YAML values, closest-key errors, round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from at2po.core.losses import POLICY_LOSSES, PolicyLossConfig
from at2po.rollout.config import RolloutConfig
from at2po.train.config import (
    ENGINE_FIELDS,
    SAMPLING_FIELDS,
    UNEXPOSED_FIELDS,
    ConfigError,
    LossConfig,
    RolloutSection,
    TrainConfig,
    describe,
    iter_fields,
    load_config,
    parse_override,
    reference_markdown,
)
from at2po.train.presets import ALGORITHMS, preset_names


def test_every_algorithm_of_the_design_has_a_preset_and_quickstart_exists():
    assert set(ALGORITHMS) | {"quickstart"} <= set(preset_names())


@pytest.mark.parametrize(
    ("preset", "mode", "estimator", "ratio", "clip", "agg"),
    [
        ("at2po", "tree", "tree", "turn", (3e-3, 4e-3), "seq-mean-token-mean"),
        ("grpo", "chain", "grpo", "token", (0.2, 0.2), "token-mean"),
        ("dapo", "chain", "grpo", "token", (0.2, 0.28), "token-mean"),
        ("gspo", "chain", "grpo", "sequence", (3e-4, 4e-4), "seq-mean-token-mean"),
        ("aepo", "branching", "grpo", "token", (0.2, 0.2), "token-mean"),
        ("tree_grpo", "tree", "tree_grpo", "token", (0.2, 0.2), "token-mean"),
        ("gigpo", "chain", "gigpo", "token", (0.2, 0.2), "token-mean"),
    ],
)
def test_presets_pick_the_published_rollout_credit_and_loss(
    preset, mode, estimator, ratio, clip, agg
):
    cfg = load_config(preset)
    assert cfg.name == preset
    assert (cfg.rollout.mode, cfg.credit.estimator, cfg.loss.ratio) == (mode, estimator, ratio)
    assert (cfg.loss.clip_low, cfg.loss.clip_high) == clip
    assert cfg.loss.agg == agg


def test_preset_specifics():
    assert load_config("at2po").rollout.expansion_mode == "entropy"
    assert load_config("tree_grpo").rollout.expansion_mode == "random"
    grpo = load_config("grpo").loss
    assert (grpo.dual_clip, grpo.kl_coef, grpo.kl_estimator) == (3.0, 1e-3, "low_var_kl")
    assert grpo.uses_reference
    assert not load_config("at2po").loss.uses_reference
    dapo = load_config("dapo").credit
    assert dapo.dynamic_sampling and dapo.overlong_buffer > 0
    aepo = load_config("aepo").loss
    assert (aepo.clip_grad, aepo.entropy_adv_beta, aepo.dual_clip) == ("upper", 0.2, 3.0)
    gigpo = load_config("gigpo").credit
    assert (gigpo.gigpo_gamma, gigpo.gigpo_step_weight) == (0.95, 1.0)


def test_quickstart_extends_at2po():
    quick, base = load_config("quickstart"), load_config("at2po")
    assert quick.name == "quickstart"
    assert (quick.rollout.mode, quick.credit.estimator, quick.loss.ratio) == (
        base.rollout.mode,
        base.credit.estimator,
        base.loss.ratio,
    )


def test_overrides_are_read_as_yaml():
    cfg = load_config(
        "at2po",
        [
            "optim.lr=3e-4",
            "train.wandb=true",
            "loss.dual_clip=null",
            "optim.betas=[0.8, 0.9]",
            "task.worlds.question_mix={bridge: 2, chain: 1}",
            "name=my run",
        ],
    )
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.wandb is True
    assert cfg.loss.dual_clip is None
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.task.worlds.question_mix == {"bridge": 2.0, "chain": 1.0}
    assert cfg.name == "my run"


def test_parse_override_splits_at_the_first_equals_sign():
    assert parse_override("task.retriever_url=http://h:1/x?a=b") == (
        ["task", "retriever_url"],
        "http://h:1/x?a=b",
    )


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("optim.lrr=1", "optim.lr"),
        ("rollout.n_row=4", "rollout.n_rows"),
        ("trian.steps=3", "train"),
        ("loss.clip_hihg=0.3", "loss.clip_high"),
    ],
)
def test_unknown_key_names_the_closest_valid_key(override, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean {suggestion!r}"):
        load_config("at2po", [override])


def test_unknown_key_in_a_yaml_file_names_the_closest_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: grpo\noptim:\n  weight_decai: 0.1\n")
    with pytest.raises(ConfigError, match=r"did you mean 'optim\.weight_decay'"):
        load_config(path)


def test_value_with_sub_keys_and_malformed_overrides_are_refused():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config("at2po", ["optim.lr.x=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("at2po", ["optim.lr"])


def test_invalid_values_name_the_field_and_the_value():
    with pytest.raises(ConfigError, match=r"optim\.lr: .*greater than 0.*got -1"):
        load_config("at2po", ["optim.lr=-1"])
    with pytest.raises(ConfigError, match=r"rollout\.mode: .*'trees' is not one of"):
        load_config("at2po", ["rollout.mode=trees"])
    with pytest.raises(ConfigError, match="overlong_buffer"):
        load_config("dapo", ["rollout.max_response_tokens=200", "rollout.max_context_tokens=400"])
    with pytest.raises(ConfigError, match="needs the reference model"):
        load_config("grpo", ["loss.reference=false"])


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'grpo'"):
        load_config("grpoo")


def test_free_combinations_for_ablations():
    cfg = load_config("grpo", ["rollout.mode=tree", "loss.name=turn"])
    assert cfg.rollout.mode == "tree" and cfg.credit.estimator == "grpo"
    # fields the grpo preset set explicitly stay; the rest come from the `turn` preset
    assert cfg.loss.ratio == "turn" and cfg.loss.clip_high == 0.2 and cfg.loss.dual_clip == 3.0


def test_rollout_section_has_the_rollout_layers_fields_and_defaults():
    """Every RolloutConfig field is exposed (or deliberately not) under its own name and default."""
    layer = {f.name for f in dataclasses.fields(RolloutConfig)} - {"sampling", *UNEXPOSED_FIELDS}
    assert set(RolloutSection.model_fields) == layer | set(SAMPLING_FIELDS) | set(ENGINE_FIELDS)
    section, defaults = RolloutSection(), RolloutConfig()
    for name in layer:
        assert getattr(section, name) == getattr(defaults, name), name
    for name in SAMPLING_FIELDS:
        assert getattr(section, name) == getattr(defaults.sampling, name), name
    assert section.to_rollout_config() == defaults


def test_rollout_section_maps_every_value_to_the_rollout_config():
    overrides = ["n_rows=12", "expansion_k=4", "top_k=5", "temperature=0.7"]
    cfg = load_config("at2po", [f"rollout.{item}" for item in overrides])
    rollout = cfg.rollout.to_rollout_config()
    assert (rollout.n_rows, rollout.expansion_k) == (12, 4)
    assert (rollout.sampling.top_k, rollout.sampling.temperature) == (5, 0.7)
    assert not rollout.sampling.greedy


def test_loss_fields_not_given_take_the_named_preset():
    for name, preset in POLICY_LOSSES.items():
        loss = LossConfig(name=name)
        assert PolicyLossConfig(**loss.policy_loss_fields()) == preset
    assert {f.name for f in dataclasses.fields(PolicyLossConfig)} <= set(LossConfig.model_fields)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config("dapo", ["optim.lr=2e-5", "train.steps=7"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_every_field_is_documented_and_describe_shows_the_help():
    fields = list(iter_fields())
    assert len(fields) > 60
    assert all(description for _, _, description in fields)
    text = describe(TrainConfig())
    assert "# Peak learning rate of AdamW." in text
    assert yaml.safe_load(text) == TrainConfig().model_dump(mode="json")


def test_docs_config_reference_is_the_generated_one():
    docs = (Path(__file__).parents[2] / "docs" / "training.md").read_text()
    reference = reference_markdown()
    assert "| `optim.lr` | `0.0001` | Peak learning rate of AdamW. |" in reference
    assert docs.endswith(reference), "regenerate with at2po.train.config.reference_markdown()"


def test_configs_are_frozen():
    cfg = TrainConfig()
    with pytest.raises(Exception, match="frozen"):
        cfg.optim.lr = 1.0  # type: ignore[misc]


def test_t2po_preset_is_gigpo_with_tti_tds_and_the_invalid_action_penalty():
    cfg = load_config("t2po")
    assert (cfg.rollout.mode, cfg.credit.estimator, cfg.loss.ratio) == ("chain", "gigpo", "token")
    assert (cfg.credit.gigpo_gamma, cfg.credit.gigpo_step_weight) == (0.95, 1.0)
    assert cfg.credit.invalid_action_penalty == 0.1
    r = cfg.rollout
    assert r.tti and r.tds and not r.tti_train_forced_tokens
    assert (r.tti_min_think, r.tti_window, r.tti_max_think, r.tds_max_redraws) == (16, 4, 64, 2)
    assert (r.uncertainty_alpha, r.uncertainty_top_j) == (0.4, 20)
    # the ablations and combinations are plain overrides
    assert not load_config("t2po", ["rollout.tti=false"]).rollout.tti
    assert not load_config("t2po", ["rollout.tds=false"]).rollout.tds
    combined = load_config("at2po", ["rollout.tti=true"]).rollout
    assert combined.mode == "tree" and combined.to_rollout_config().tti
    assert load_config("gigpo").credit.invalid_action_penalty == 0.0


def test_t2po_settings_are_checked():
    with pytest.raises(ConfigError, match="uncertainty_top_j"):
        load_config("t2po", ["rollout.uncertainty_top_j=1"])
    with pytest.raises(ConfigError, match="tti_eps"):
        load_config("t2po", ["rollout.tti_eps=-1"])
