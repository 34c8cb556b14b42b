"""Resuming a run dir keeps its saved config (rollout/settings/resume.py), on configs composed exactly
as launch.py composes them. The launches themselves: tests/test_first_hour.py."""

from __future__ import annotations

import pytest

from rollout.settings.resume import FLAG, ResumeConflict, resume_config, touched_keys
from tests.launch_config import compose_raw, qwen_tokenizer_dir

RUN = ["conf=swe_smith", "run.dir=/tmp/r", "policy=gold", f"policy.tokenizer={qwen_tokenizer_dir()}",
       "env.group_size=2", "tasks.max_items=3"]
CHOICES = {"conf": "swe_smith", "policy": "gold", "trainer": "jsonl", "backend": "local",
           "logger": "none"}


def resume(args: list[str], choices: dict[str, str] | None = CHOICES):
    saved = compose_raw(RUN)
    return saved, *resume_config(saved, compose_raw(args), args, choices)


def test_the_run_dir_alone_resumes_with_the_saved_config():
    saved, effective, changes = resume(["run.dir=/tmp/r"])
    assert effective == saved and changes == []
    assert effective["policy"]["type"] == "gold"  # not the default, embedded


def test_repeating_the_command_line_is_no_change():
    saved, effective, changes = resume(RUN)
    assert effective == saved and changes == []
    # a preset or group repeated without the overrides made on top of it: still no change
    saved, effective, changes = resume(["conf=swe_smith", "policy=gold", "run.dir=/tmp/r"])
    assert effective == saved and changes == []


def test_a_changed_key_is_refused_with_every_differing_key_named():
    with pytest.raises(ResumeConflict) as e:
        resume(["run.dir=/tmp/r", "env.group_size=4", "tasks.max_items=3", "agent.max_turns=5"])
    msg = str(e.value)
    assert "env.group_size: 2 -> 4" in msg and "agent.max_turns: 30 -> 5" in msg
    assert "tasks.max_items" not in msg  # the same value is no change
    assert FLAG + "=true" in msg and "\n" not in msg


def test_the_flag_applies_the_changes_and_is_not_saved():
    saved, effective, changes = resume(["run.dir=/tmp/r", "env.group_size=4", f"{FLAG}=true"])
    assert effective["env"]["group_size"] == 4 and changes == ["env.group_size: 2 -> 4"]
    assert effective["policy"] == saved["policy"]  # what the command line omits is kept
    assert effective["run"].get("resume_overrides") == saved["run"].get("resume_overrides")


def test_keys_that_only_steer_the_launch_may_differ():
    saved, effective, changes = resume(["run.dir=/tmp/r2", "run.log_level=DEBUG",
                                        "run.shutdown_grace=5", "run.progress=false"])
    assert changes == []
    assert effective["run"]["dir"] == "/tmp/r2" and effective["run"]["log_level"] == "DEBUG"


def test_another_group_option_is_another_run_even_with_the_flag():
    for args in (["run.dir=/tmp/r", "policy=embedded"],
                 ["run.dir=/tmp/r", "policy=embedded", f"{FLAG}=true"]):
        with pytest.raises(ResumeConflict, match=r"policy: gold -> embedded.*new run.dir"):
            resume(args)


def test_without_a_record_of_the_groups_an_option_compares_the_keys_it_sets():
    assert "policy.type" in touched_keys(["policy=embedded"])
    assert "env.group_size" in touched_keys(["conf=swe_smith"])  # a preset: global keys
    with pytest.raises(ResumeConflict, match=r"policy.type: gold -> embedded"):
        resume(["run.dir=/tmp/r", "policy=embedded"], choices=None)
    # A record the saved config contradicts (hydra/ rewritten by an older resuming launch)
    # is not trusted: the keys are compared.
    with pytest.raises(ResumeConflict, match=r"policy.type: gold -> embedded"):
        resume(["run.dir=/tmp/r", "policy=embedded"], choices={**CHOICES, "policy": "embedded"})
