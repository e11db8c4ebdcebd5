"""The project as a user installs it: a wheel (not an editable install) in a fresh environment."""

import subprocess
import sys
import sysconfig
import venv

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """A fresh venv and the project's wheel unpacked for it (dependencies come from this environment)."""
    work = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(work / "dist"), str(ROOT)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    wheel = next((work / "dist").glob("hydra_export-*.whl"))
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(work / "env")
    python = work / "env" / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                                "--force-reinstall", "--target", str(work / "site"), str(wheel)],
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    return python, work / "site", wheel


def run_in(env, *args):
    """Run code in the fresh venv: the wheel's files first, then this environment's dependencies,
    added as a plain path (its .pth files, the editable install's finder among them, are not run)."""
    python, site, _ = env
    dependencies = sysconfig.get_paths()["purelib"]
    code = "import sys; sys.path[:0] = [sys.argv.pop(1)]; sys.path.append(sys.argv.pop(1)); " + args[0]
    return subprocess.run([str(python), "-c", code, str(site), dependencies, *args[1:]], capture_output=True,
                          text=True, cwd="/")


def test_the_wheel_carries_every_package(wheel_env):
    import zipfile

    names = zipfile.ZipFile(wheel_env[2]).namelist()
    for required in ("hydra_export/training/trainer.py", "hydra_runtime/backends/ort_backend.py",
                     "hydra_export/shipped_heads/smollm2-135m-instruct/hydra++/heads.safetensors"):
        assert required in names


@pytest.mark.parametrize("command", [["--help"], ["train", "--help"], ["build", "--help"]])
def test_the_installed_cli_runs(wheel_env, command):
    result = run_in(wheel_env, "import sys; from hydra_export.cli import run; "  # the console script's entry point
                               "sys.argv = ['hydra-export', *sys.argv[1:]]; run()", *command)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    misuse = run_in(wheel_env, "import sys; from hydra_export.cli import run; sys.argv = ['hydra-export', 'build']; run()")
    assert misuse.returncode == 2 and "Missing option" in misuse.stderr  # exit codes survive the fast exit
    path = run_in(wheel_env, "import hydra_export, hydra_runtime; print(hydra_export.__file__, hydra_runtime.__file__)")
    assert str(ROOT) not in path.stdout and "site" in path.stdout  # the wheel's copy, not this checkout
