"""Configuration: params.yaml and presets validate; bad values and typos get one clear line each."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from switch_core.config import Config, ConfigError, load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_is_valid_and_the_schema_keeps_the_paper_protocol():
    """params.yaml (the embedded default) validates; the schema defaults are the paper's protocol (METHOD.md §5)."""
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.data.source == "embedded" and cfg.teacher.source == "embedded"
    protocol = Config().eval
    assert protocol.seeds == [10, 20, 30, 40, 50] and protocol.max_new_tokens == 256
    assert (protocol.temperature, protocol.top_k, protocol.top_p, protocol.no_repeat_ngram_size) == (1.0, 0, 1.0, 6)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "presets").glob("*.yaml")))
def test_every_preset_validates(preset):
    cfg = load_config(ROOT / "params.yaml", preset=preset)
    assert cfg.preset == preset


WHOLE_EXPERIMENTS = sorted(p.stem for p in (ROOT / "presets").glob("*.yaml") if p.stem != "tiny")


@pytest.mark.parametrize("preset", WHOLE_EXPERIMENTS)
def test_an_experiment_preset_takes_nothing_from_the_embedded_default(preset):
    """The paper-pair and study presets say ``base: defaults``: params.yaml's short embedded runs (8 distillation
    steps, 64 new tokens, 2 seeds) do not leak into them; they resolve as on the schema defaults alone."""
    over_params = load_config(ROOT / "params.yaml", preset=preset).model_dump()
    assert over_params == load_config(None, preset=preset).model_dump()
    assert over_params["optim"]["max_steps"] != load_config(ROOT / "params.yaml").optim.max_steps


def test_a_preset_base_is_checked_and_defaults_drops_the_params_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"optim": {"max_steps": 8}, "eval": {"seeds": [10, 20]}}))
    (tmp_path / "on-params.yaml").write_text(yaml.safe_dump({"optim": {"lr": 1e-3}}))
    (tmp_path / "on-defaults.yaml").write_text(yaml.safe_dump({"base": "defaults", "optim": {"lr": 1e-3}}))
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"base": "default"}))
    kept = load_config(params, preset=str(tmp_path / "on-params.yaml"))
    assert (kept.optim.max_steps, kept.eval.seeds, kept.optim.lr) == (8, [10, 20], 1e-3)
    fresh = load_config(params, preset=str(tmp_path / "on-defaults.yaml"), overrides=["optim.max_steps=3"])
    assert (fresh.optim.max_steps, fresh.eval.seeds, fresh.optim.lr) == (3, Config().eval.seeds, 1e-3)
    with pytest.raises(ConfigError, match="base = 'default'; use one of params, defaults"):
        load_config(params, preset=str(tmp_path / "typo.yaml"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lr=-1", ["optim.lr = -1", "greater than 0"]),
        ("optim.lrr=1e-4", ["optim.lrr", "unknown key", "did you mean 'lr'"]),
        ("rollout.tau0=-0.1", ["rollout.tau0 = -0.1", "greater than or equal to 0"]),
        ("rollout.decay=-0.5", ["rollout.decay = -0.5"]),
        ("data.max_prompt_length=512", ["max_prompt_length (512) must be < data.max_length (512)"]),
        ("rollout.schedule=exponentail", ["rollout.schedule", "did you mean 'exponential'"]),
        ("methods.gdk.beta=0.2", ["unknown method 'gdk'", "did you mean 'gkd'"]),
        ("optim.batch_size=6", ["  - optim: batch_size (6) must be a multiple of micro_batch_size (8)"]),
        ("teacher_optim.batch_size=6", ["  - teacher_optim: batch_size (6) must be a multiple of micro_batch_size"]),
        ("optim.epochs=two", ["optim.epochs = 'two'", "valid integer"]),
        ("student.lora.rr=4", ["student.lora.rr", "did you mean 'r'", "valid keys here: r, alpha"]),
    ],
)
def test_bad_values_name_the_key_value_and_range(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides=[override])
    for fragment in expected:
        assert fragment in str(err.value)


def test_typo_in_params_file_is_reported_with_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"rollout": {"tau_0": 0.2}}))
    with pytest.raises(ConfigError) as err:
        load_config(params)
    msg = str(err.value)
    assert str(params) in msg and "rollout.tau_0" in msg and "did you mean 'tau0'" in msg


def test_precedence_params_then_preset_then_set(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "mine.yaml").write_text(yaml.safe_dump({"optim": {"lr": 2e-4, "epochs": 3}}))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"preset": "mine", "optim": {"lr": 1e-4, "seed": 7}}))
    cfg = load_config(params, overrides=["optim.epochs=5"])
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.optim.seed) == (2e-4, 5, 7)
    assert cfg.preset == "mine"


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match="available presets"):
        load_config(None, preset="no-such-preset")


def test_override_values_are_yaml():
    assert parse_override("eval.seeds=[1, 2]") == ("eval.seeds", [1, 2])
    assert parse_override("rollout.tau0=null") == ("rollout.tau0", None)
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("optim.lr")


def test_run_overrides_and_chains():
    cfg = load_config(
        None,
        overrides={
            "runs.switch-hi": {"method": "switch", "overrides": {"rollout.tau0": 0.4}},
            "runs.switch-lo": {"method": "switch", "init_from": "switch-hi", "overrides": {"rollout.tau0": 0.1}},
        },
    )
    assert cfg.run_config("switch-hi").rollout.tau0 == 0.4
    assert cfg.run_config("switch-lo").rollout.tau0 == 0.1
    assert cfg.rollout.tau0 is None
    with pytest.raises(ConfigError, match="did you mean 'switch-hi'"):
        cfg.run_config("switch-hii")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(None, overrides={"runs.a": {"method": "kd", "init_from": "b"}, "runs.b": {"method": "kd", "init_from": "a"}})
    with pytest.raises(ConfigError, match="runs.bad.overrides"):
        load_config(None, overrides={"runs.bad": {"method": "kd", "overrides": {"optim.lr": -1}}}).run_config("bad")


def test_params_yaml_spells_out_every_key():
    """Every schema key appears in params.yaml, so DVC tracks it and users see it."""
    from switch_core.config import flatten

    written = set(flatten(yaml.safe_load((ROOT / "params.yaml").read_text())))
    assert written == set(flatten(Config().model_dump()))


def test_runs_in_a_file_replace_the_default_runs(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"runs": {"kd": {"method": "kd"}, "switch": {"method": "switch"}}}))
    assert list(load_config(params).runs) == ["kd", "switch"]


def test_run_names_are_folder_and_stage_safe():
    with pytest.raises(ConfigError, match="reserved"):
        load_config(None, overrides={"runs.teacher": {"method": "kd"}})
    with pytest.raises(ConfigError, match="letters, digits"):
        load_config(None, overrides={"runs.a b": {"method": "kd"}})


def test_unquoted_no_from_yaml_1_2_writers_means_no_mixed_precision(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("optim:\n  mixed_precision: no\n")
    assert load_config(params).optim.mixed_precision == "no"


def test_precision_settings_are_validated_once_naming_the_key():
    """``eval.dtype`` and each section's ``mixed_precision`` accept their choices only; the message names the key,
    the allowed values and the nearest one."""
    config = load_config(None, overrides=["eval.dtype=bfloat16", "optim.mixed_precision=bf16"])
    assert (config.eval.dtype, config.optim.mixed_precision, config.teacher_optim.mixed_precision) == (
        "bfloat16", "bf16", "no")
    assert Config().eval.dtype == "float32"
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides=["eval.dtype=bf16", "warmup_optim.mixed_precision=bfloat16"])
    assert str(err.value).splitlines()[1:] == [
        "  - warmup_optim.mixed_precision = 'bfloat16': must be one of 'no', 'bf16' or 'fp16' (did you mean 'bf16'?)",
        "  - eval.dtype = 'bf16': must be one of 'float32', 'bfloat16' or 'float16' (did you mean 'bfloat16'?)",
    ]


def test_a_value_outside_a_union_of_literals_is_one_line_listing_every_choice():
    """methods.*.loss is ``DivergenceName | Literal["ce"]``: pydantic reports each member; the user sees one line."""
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides=["methods.switch.loss=fkll"])
    lines = str(err.value).splitlines()[1:]
    expected = (
        "  - methods.switch.loss = 'fkll': must be one of 'fkl', 'rkl', 'jsd', 'skl', 'srkl', 'tvd' or 'ce' "
        "(did you mean 'fkl'?)"
    )
    assert lines == [expected]


def test_each_optimisation_section_knows_its_key_for_messages():
    from switch_core.training.job import TrainingSetupError
    from switch_core.training.step import StepLayout

    config = load_config(None, overrides=["teacher_optim.batch_size=8"])
    assert (config.teacher_optim.key, config.warmup_optim.key, config.optim.key) == (
        "teacher_optim", "warmup_optim", "optim"
    )
    assert config.run_config(next(iter(config.runs))).teacher_optim.key == "teacher_optim"
    with pytest.raises(TrainingSetupError, match=r"3 training examples are fewer than one batch "
                                                 r"\(teacher_optim.batch_size=8\)"):
        StepLayout.of(config.teacher_optim, 1, 3)


def test_student_layer_selection_errors_name_the_fields():
    cfg = load_config(None, overrides=["student.layer_selection=block_influence", "student.keep_layers=15"])
    assert (cfg.student.layer_selection, cfg.student.keep_layers, cfg.student.selection_examples) == (
        "block_influence", 15, 32)
    assert load_config(None).student.layer_selection == "even"
    with pytest.raises(ConfigError, match=r"student.layer_selection = 'block_influence'.*student.keep_layers = \[0, 3\]"):
        load_config(None, overrides=["student.layer_selection=block_influence", "student.keep_layers=[0, 3]"])
    with pytest.raises(ConfigError, match="student.selection_examples"):
        load_config(None, overrides=["student.selection_examples=0"])
    with pytest.raises(ConfigError, match="student.layer_selection"):
        load_config(None, overrides=["student.layer_selection=shortgpt"])
