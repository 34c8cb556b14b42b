"""The typed config sections: strict types, one-line errors, frozen after validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rollout.agent import AgentConfig
from rollout.config import ConfigError, EnvConfig, RunSection, load_config
from rollout.config_model import format_error
from rollout.policy import PolicyConfig
from rollout.tasks.config import GradingProfile, TaskSourceConfig
from rollout.trainer.sink import TrainerConfig
from tests.launch_config import compose_raw, qwen_tokenizer_dir

GOLD = ["conf=swe_smith", "run.dir=/tmp/unused", "policy=gold",
        f"policy.tokenizer={qwen_tokenizer_dir()}"]


@pytest.fixture(scope="module")
def raw() -> dict:
    return compose_raw(GOLD)


def with_value(raw: dict, key: str, value: object) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    section, name = key.split(".", 1)
    out[section][name] = value
    return out


# --- strict, but not stricter than a YAML file and a command line need ----------------------


@pytest.mark.parametrize("key, value, message", [
    ("env.group_size", "4", "env.group_size must be an integer, got '4'"),
    ("env.group_size", True, "env.group_size must be an integer, got True"),
    ("env.group_size", 4.0, "env.group_size must be an integer, got 4.0"),
    ("env.weight", True, "env.weight must be a number, got True"),
    ("env.weight", "1.0", "env.weight must be a number, got '1.0'"),
    ("run.progress", "yes", "run.progress must be true or false, got 'yes'"),
    ("run.progress", 1, "run.progress must be true or false, got 1"),
    ("policy.model", ["m"], "policy.model must be a string, got ['m']"),
    ("tasks.repo_sources", "/srv", "tasks.repo_sources must be a list, got '/srv'"),
    ("policy.stop", ["ok", None], "policy.stop[1] must be a string, got None"),
    ("tasks.profiles", {"r": 3}, "tasks.profiles.r must be a mapping, got 3"),
    ("tasks.profiles", {"r": {"test_timeout": "9"}},
     "tasks.profiles.r.test_timeout must be a number, got '9'"),
    ("trainer.type", "pigeon", "trainer.type must be 'jsonl' or 'atropos', got 'pigeon'"),
    ("env.group_size", 0, "env.group_size must be >= 1, got 0"),
    ("tasks.eval_fraction", 1.0, "tasks.eval_fraction must be < 1, got 1.0"),
    ("tasks.timeout_retry_factor", 101, "tasks.timeout_retry_factor must be <= 100, got 101"),
])
def test_wrong_types_and_ranges_are_one_line_errors(raw, key, value, message):
    with pytest.raises(ConfigError) as info:
        load_config(with_value(raw, key, value))
    assert str(info.value) == message


def test_yaml_and_command_line_values_that_must_still_work(raw):
    raw = with_value(raw, "env.weight", 2)  # an int for a float
    raw = with_value(raw, "policy.model", 7)  # Hydra reads `policy.model=7` as an int
    raw = with_value(raw, "tasks.repo_sources", ["/srv/mirrors", 1])
    raw = with_value(raw, "tasks.profiles", {"mylib": {"paths": ["src"], "env": {"A": 1}}})
    cfg = load_config(raw)
    assert cfg.env.weight == 2.0 and isinstance(cfg.env.weight, float)
    assert cfg.policy.model == "7" and cfg.tasks.repo_sources == ["/srv/mirrors", "1"]
    profile = cfg.tasks.profile("owner/mylib")
    assert isinstance(profile, GradingProfile)  # a nested section from a mapping
    assert profile.paths == ("src",) and profile.env == (("A", "1"),)  # list -> tuple


def test_unknown_keys_are_listed_together_with_the_valid_ones(raw):
    with pytest.raises(ConfigError) as info:
        load_config(with_value(raw, "tasks.profiles", {"r": {"pythn": "p", "pathz": []}}))
    assert str(info.value) == ("unknown keys tasks.profiles.r.pythn, tasks.profiles.r.pathz; "
                               "valid keys: python, paths, env, plugin_autoload, test_timeout")
    with pytest.raises(ConfigError, match=r"^unknown key env.grup_size; valid keys: name, "):
        load_config(with_value(raw, "env.grup_size", 3))


def test_cross_field_checks_name_the_key_to_change(raw):
    bad = with_value(with_value(raw, "env.group_size", 1), "env.ensure_scores_are_not_same", True)
    with pytest.raises(ConfigError, match="^env.ensure_scores_are_not_same must be false when "
                                          "group_size=1"):
        load_config(bad)
    with pytest.raises(ConfigError, match="^policy.base_url is needed by policy.type=sglang"):
        PolicyConfig(type="sglang", tokenizer="t")
    with pytest.raises(ConfigError, match=r"^trainer.url must be an http\(s\) URL"):
        TrainerConfig(type="atropos", url="ftp://h")
    # A key of another type is that type's: the jsonl trainer has no URL to check.
    with pytest.raises(ConfigError, match="^trainer.url is a setting of trainer.type=atropos, "
                                          "not of trainer.type=jsonl; remove it"):
        TrainerConfig(type="jsonl", url="unused")


def test_sections_built_directly_give_the_same_one_line_errors():
    with pytest.raises(ConfigError, match="^agent.max_turns must be an integer, got '3'$"):
        AgentConfig(max_turns="3")
    with pytest.raises(ConfigError, match="^unknown key run.dri; valid keys: dir, "):
        RunSection(dri="x")
    with pytest.raises(ConfigError, match="^tasks.profiles.x.paths must be a list of paths$"):
        TaskSourceConfig(profiles={"x": {"paths": "src"}})


def test_the_formatter_puts_a_typo_before_the_errors_it_may_explain():
    with pytest.raises(ValidationError) as info:
        PolicyConfig.model_validate({"type": "scripted", "tokenizer": "t", "max_tokens": "x",
                                     "tmperature": 0.5})
    assert len(info.value.errors()) == 2
    assert format_error(info.value, PolicyConfig, "policy").startswith(
        "unknown key policy.tmperature; valid keys: type, base_url, model, tokenizer, ")
    assert format_error(info.value, PolicyConfig, "").startswith("unknown key tmperature;")


# --- never changed after validation -----------------------------------------------------------


def test_a_validated_config_cannot_be_changed(raw):
    cfg = load_config(raw)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.trainer.env_name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        cfg.policy = cfg.policy  # type: ignore[misc]


def test_replace_gives_a_new_validated_object_and_leaves_the_old_one(raw):
    cfg = load_config(raw)
    policy = cfg.policy.replace(base_url="http://h:1", tokenizer="/tok")
    new = cfg.replace(policy=policy)
    assert new.policy.base_url == "http://h:1" and new.env is cfg.env
    assert cfg.policy.base_url == "" and cfg.policy.tokenizer == qwen_tokenizer_dir()
    with pytest.raises(ConfigError, match="^policy.tokenizer is empty"):
        cfg.policy.replace(tokenizer="")
    with pytest.raises(ConfigError, match="^env.group_size must be >= 1, got 0$"):
        EnvConfig().replace(group_size=0)
