"""deploy/setup/: the scripts every node of deploy/cluster.yaml runs, run here for real in a
throwaway home. Where everything is installed they install nothing, and a second run changes
nothing; a dependency the environment lacks is named, so `ray up` installs again."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "deploy" / "setup"


def node_home(tmp_path: Path) -> dict:
    """A node's home as the file mounts leave it: the sources under ~/accord and the token."""
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("0" * 64)
    (tmp_path / "accord").symlink_to(REPO, target_is_directory=True)
    return {**os.environ, "HOME": str(tmp_path), "ACCORD_VENV": sys.prefix}


def test_installed_accepts_this_environment_and_names_what_another_pyproject_lacks(tmp_path):
    ok = subprocess.run([sys.executable, SETUP / "installed.py", REPO / "pyproject.toml"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text((REPO / "pyproject.toml").read_text().replace(
        '"numpy>=1.24",', '"numpy>=1.24", "no-such-package-accord>=1", "torch<1",'))
    gap = subprocess.run([sys.executable, SETUP / "installed.py", pyproject], capture_output=True, text=True)
    assert gap.returncode == 1
    assert "needs installing: no-such-package-accord (not installed)" in gap.stdout
    assert "needs installing: torch" in gap.stdout and "(wanted <1)" in gap.stdout


def test_node_setup_installs_nothing_when_installed_and_runs_twice_to_the_same_home(tmp_path):
    env = node_home(tmp_path)
    for _ in range(2):
        done = subprocess.run(["bash", SETUP / "node.sh"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"accord: installed in {sys.prefix}"
    bashrc = (tmp_path / ".bashrc").read_text().splitlines()
    assert bashrc == [f"source {sys.prefix}/bin/activate", "export RAY_AUTH_MODE=token"]
    assert stat.S_IMODE((tmp_path / ".ray" / "auth_token").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / ".ray").stat().st_mode) == 0o700
    assert not (tmp_path / ".local").exists()  # no uv fetched


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_head_setup_skips_what_is_installed_and_makes_the_redis_password_once(tmp_path):
    env = {**node_home(tmp_path), "ACCORD_SETUP_SKIP": "prometheus grafana"}
    first = subprocess.run(["bash", SETUP / "head.sh"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "prometheus: skipped (ACCORD_SETUP_SKIP)", "grafana: skipped (ACCORD_SETUP_SKIP)",
        "redis-server: installed", "redis: password generated in ~/.accord/redis.password"]
    password = tmp_path / ".accord" / "redis.password"
    secret = password.read_text()
    assert len(secret) >= 32 and stat.S_IMODE(password.stat().st_mode) == 0o600
    again = subprocess.run(["bash", SETUP / "head.sh"], env=env, capture_output=True, text=True)
    assert "redis: password generated" not in again.stdout and password.read_text() == secret
