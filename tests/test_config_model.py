"""The typed config sections: strict types, one-line errors, frozen after validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rollout.agent.loop import AgentConfig
from rollout.settings.config import ConfigError, EnvConfig, RunSection, load_config
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


# --- sections chosen by kind: policy.type, trainer.type, tasks.kind (registries) -------------


@pytest.mark.parametrize("key, value, message", [
    ("policy.type", "vllm", "policy.type must be 'openai_completions', 'sglang', 'openai_chat', "
                            "'gold', 'scripted', 'embedded' or 'simulated', got 'vllm'"),
    ("trainer.type", "pigeon", "trainer.type must be 'jsonl' or 'atropos', got 'pigeon'"),
    ("tasks.kind", "webshop", "tasks.kind: unknown task kind 'webshop'; registered kinds: "
                              "math, math_repl, swe_smith, terminal"),
])
def test_an_unknown_kind_lists_the_registered_ones(raw, key, value, message):
    with pytest.raises(ConfigError) as info:
        load_config(with_value(raw, key, value))
    assert str(info.value) == message


@pytest.mark.parametrize("key, value, message", [
    ("tasks.verifier", "pytest", "tasks.verifier is a setting of tasks.kind=terminal, not of "
                                 "tasks.kind=swe_smith; remove it or change tasks.kind "
                                 "(conf=swe_smith is the preset of tasks.kind=swe_smith)"),
    ("tasks.kind", "terminal", "tasks.grading_concurrency is a setting of tasks.kind=swe_smith, "
                               "not of tasks.kind=terminal; remove it or change tasks.kind "
                               "(conf=terminal is the preset of tasks.kind=terminal)"),
    ("policy.responses", ["hi"], "policy.responses is a setting of policy.type=scripted, not of "
                                 "policy.type=gold; remove it or change policy.type"),
    ("policy.simulated", {}, "policy.simulated is a setting of policy.type=simulated, not of "
                             "policy.type=gold; remove it or change policy.type"),
])
def test_a_key_of_another_kind_is_refused_naming_its_kind(raw, key, value, message):
    with pytest.raises(ConfigError) as info:
        load_config(with_value(raw, key, value))
    assert str(info.value) == message


def test_each_kind_validates_its_own_settings():
    from rollout.tasks.config import CommonSource, SweSmithSource
    from rollout.tasks.terminal import TerminalSource

    terminal = TaskSourceConfig(kind="terminal", verifier="pytest")
    assert isinstance(terminal, TerminalSource) and terminal.verifier == "pytest"
    assert isinstance(TaskSourceConfig(), SweSmithSource)  # the default kind
    assert isinstance(TaskSourceConfig.load({"kind": "math"}), CommonSource)
    with pytest.raises(ConfigError, match="^tasks.profiles is a setting of tasks.kind=swe_smith, "
                                          "not of tasks.kind=terminal"):
        TaskSourceConfig(kind="terminal", profiles={})
    with pytest.raises(ConfigError, match="^tasks.test_timeout is a setting of "
                                          "tasks.kind=swe_smith or terminal, not of tasks.kind=math"):
        TaskSourceConfig.load({"kind": "math", "test_timeout": 30})
    with pytest.raises(ConfigError, match="^tasks.verifier must be 'auto' or 'pytest', got 'x'$"):
        TaskSourceConfig(kind="terminal", verifier="x")
    # A source entry is its own kind's, with the section's values its kind has.
    cfg = TaskSourceConfig(profiles={"r": {"test_timeout": 5}},
                           sources=[{"kind": "terminal", "verifier": "pytest"}, {"kind": "math"}])
    (term, _), (math, _) = cfg.mixture()
    assert isinstance(term, TerminalSource) and term.verifier == "pytest"
    assert isinstance(math, CommonSource) and not hasattr(math, "profiles")
    with pytest.raises(ConfigError, match=r"^tasks.sources entry 0 \(math\): unknown key\(s\) "
                                          "verifier"):
        TaskSourceConfig(sources=[{"kind": "math", "verifier": "pytest"}])
    # Changing the kind gives that kind's model, keeping the keys it has.
    swe = term.replace(kind="swe_smith")
    assert isinstance(swe, SweSmithSource) and swe.test_timeout == term.test_timeout


def test_a_kinds_lease_budget_and_exposed_paths_are_its_own(raw):
    from rollout.settings.config import LEASE_MARGIN, lease_budget, slot_limits

    swe = with_value(raw, "tasks.profiles", {"r": {"test_timeout": 300, "python": "/opt/py/bin/python"}})
    cfg = load_config(swe)
    tasks = cfg.tasks
    # SWE-smith: its slowest repo's tests, retried once with timeout_retry_factor x.
    assert lease_budget(cfg) == (cfg.agent.wall_clock_budget + tasks.prepare_timeout
                                 + 300 * (1 + tasks.timeout_retry_factor) + LEASE_MARGIN)
    assert "/opt/py/bin/python" in slot_limits(cfg).expose
    terminal = {**raw, "tasks": {"kind": "terminal", "test_timeout": 50.0}}
    cfg = load_config(terminal)
    # The terminal kind does not retry a verifier run.
    assert lease_budget(cfg) == cfg.agent.wall_clock_budget + cfg.tasks.prepare_timeout + 50 \
        + LEASE_MARGIN


def test_the_command_line_takes_every_kinds_keys_and_the_chosen_kind_checks_them(tmp_path):
    from tests.launch_config import compose_config

    base = ["run.dir=" + str(tmp_path), "policy=gold", f"policy.tokenizer={qwen_tokenizer_dir()}"]
    cfg = compose_config(["conf=terminal", *base, "tasks.verifier=pytest", "trainer=atropos",
                          "trainer.send_batch=2"])
    assert cfg.tasks.verifier == "pytest" and cfg.trainer.send_batch == 2 and cfg.trainer.api
    with pytest.raises(ConfigError, match="^tasks.verifier is a setting of tasks.kind=terminal"):
        compose_config(["conf=swe_smith", *base, "tasks.verifier=pytest"])
    with pytest.raises(ConfigError, match="^trainer.send_batch is a setting of trainer.type=atropos"):
        compose_config(["conf=swe_smith", *base, "trainer.send_batch=2"])


def test_a_kind_registered_outside_the_project_is_validated_by_its_own_model():
    from rollout.tasks import registry
    from rollout.tasks.config import TaskSourceConfig as Base

    class ToySource(Base):
        kind: str = "toy"
        levels: int = 3

    registry.register(registry.TaskKind("toy", lambda cfg: None, lambda cfg: ([], None),
                                        settings=ToySource))
    try:
        toy = TaskSourceConfig.load({"kind": "toy", "levels": 5})
        assert isinstance(toy, ToySource) and toy.levels == 5
        with pytest.raises(ConfigError, match="^tasks.levels must be an integer, got 'x'$"):
            TaskSourceConfig.load({"kind": "toy", "levels": "x"})
        with pytest.raises(ConfigError, match="^tasks.levels is a setting of tasks.kind=toy"):
            TaskSourceConfig(kind="terminal", levels=5)
    finally:
        registry._REGISTRY.pop("toy")


def test_a_dump_keeps_each_kinds_own_keys_and_loads_back(tmp_path):
    # What a replay reads (config.yaml from model_dump) and what the logger gets.
    from tests.launch_config import compose_config

    cfg = compose_config(["conf=terminal", f"run.dir={tmp_path}", "policy=scripted",
                          f"policy.tokenizer={qwen_tokenizer_dir()}", "policy.responses=[hi]",
                          "trainer=atropos", "tasks.verifier=pytest"])
    dumped = cfg.model_dump(mode="json")
    assert dumped["tasks"]["verifier"] == "pytest" and dumped["policy"]["responses"] == ["hi"]
    assert dumped["trainer"]["send_batch"] == 8 and "slots_per_host" in dumped["backend"]
    dumped.pop("extra")
    assert load_config(dumped) == cfg
