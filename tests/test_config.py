import pytest

from rollout.settings.config import ConfigError
from tests.launch_config import compose_config, compose_raw, qwen_tokenizer_dir

GOLD = ["policy=gold", f"policy.tokenizer={qwen_tokenizer_dir()}"]


def test_preset_composes_into_typed_config(tmp_path):
    cfg = compose_config(["conf=swe_smith", f"run.dir={tmp_path}", *GOLD])
    assert cfg.env.group_size == 4 and cfg.trainer.type == "jsonl"
    assert cfg.backend.name == "local" and cfg.backend.slots_per_host >= 1
    assert cfg.tasks.source == "bundled" and cfg.policy.type == "gold"


def test_overrides_reach_the_typed_config(tmp_path):
    cfg = compose_config([
        "conf=swe_smith", f"run.dir={tmp_path}", *GOLD, "env.group_size=16",
        "workers.num=8", "run.max_groups=3", "trainer=atropos", "trainer.url=http://h:9000",
    ])
    assert (cfg.env.group_size, cfg.workers.num, cfg.run.max_groups) == (16, 8, 3)
    assert cfg.trainer.type == "atropos" and cfg.trainer.url == "http://h:9000"


@pytest.mark.parametrize("override, message", [
    ("+env.grup_size=3", "unknown key env.grup_size"),
    ("env.group_size=zero", "env.group_size must be an integer"),
    ("env.group_size=0", "env.group_size must be >= 1"),
    ("workers.num=0", "workers.num"),
    ("sandbox.isolation=maybe", "sandbox.isolation"),
    ("sandbox.memory_mb='4096'", "sandbox.memory_mb must be an integer, got '4096'"),
    ("sandbox.network=yes", "sandbox.network must be true or false, got 'yes'"),
    ("+sandbox.images.x.source=[1]", "sandbox.images.x.source must be a string"),
    ("backend.max_hosts=0", "backend.max_hosts must be >= 1, got 0"),
    ("backend.name=cloud9", "unknown backend 'cloud9' \\(available: local"),
    ("trainer.type=carrier-pigeon", "trainer.type must be"),
])
def test_bad_values_get_one_line_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config(["conf=swe_smith", f"run.dir={tmp_path}", *GOLD, override])


def test_the_project_has_one_config_error():
    # The slot server's own flags and the run's config raise the same class, so launch.py's
    # one-line handling catches both.
    import rollout.config_model
    import sandbox_image.config

    assert ConfigError is rollout.config_model.ConfigError is sandbox_image.config.ConfigError
    assert issubclass(ConfigError, ValueError)


def test_endpoint_policy_requires_its_url():
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(MissingMandatoryValue) as info:
        compose_raw(["conf=swe_smith", "policy=openai_completions", "policy.model=m",
                     f"policy.tokenizer={qwen_tokenizer_dir()}"])
    assert info.value.full_key == "policy.base_url"
