"""`accord train` through the real CLI as a learning test runs it: one subprocess per run,
joined to the module's Ray head (`tests/learning/conftest.py`), its metrics.csv read back."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ACCORD = str(Path(sys.executable).parent / "accord")


@dataclass
class Run:
    rows: list[dict]  # metrics.csv, one dict per row
    output: str       # the driver's stdout and stderr

    def series(self, key: str) -> list[float]:
        """Every value the run logged for `key`, in order (rows without it skipped)."""
        return [float(r[key]) for r in self.rows if r.get(key)]


def cli_env() -> dict[str, str]:
    """The environment of an `accord` subprocess: no RAY_ADDRESS (the command line says which
    Ray), and this checkout on PYTHONPATH, so that Ray's workers import its code as the driver
    does (and env ids named `module:EnvId` from tests/ import in the actors)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def train(root: Path, config: str, *sets: str, address: str, hang_guard: float) -> Run:
    """`accord train CONFIG --address ADDRESS --set run.root=ROOT --set ...`; asserts it exits 0.
    `hang_guard` only stops a run that hangs: the tests budget frames, never seconds."""
    result = subprocess.run(
        [ACCORD, "train", config, f"--address={address}", "--set", f"run.root={root}",
         "--set", "run.progress=false", *[arg for s in sets for arg in ("--set", s)]],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=hang_guard)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    (run_dir,) = Path(root).iterdir()
    return Run(list(csv.DictReader(open(run_dir / "metrics.csv"))), output)
