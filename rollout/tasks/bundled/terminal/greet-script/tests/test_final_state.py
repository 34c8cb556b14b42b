import os
import subprocess


def test_script_is_executable():
    assert os.access("bin/greet", os.X_OK)


def test_greets_by_name():
    out = subprocess.run(["bin/greet", "Ada"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and out.stdout == "Hello, Ada!\n"


def test_greets_the_world_by_default():
    out = subprocess.run(["bin/greet"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and out.stdout == "Hello, world!\n"
