"""New run directories: RUN_ROOT/NAME-YYYYmmdd-HHMMSS, made before anything heavy is imported,
so a root that cannot be written to is reported before Ray or torch load."""
from __future__ import annotations

import time
from pathlib import Path

from accord.config import ExperimentConfig
from accord.errors import UserError


def new_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.run.root) / f"{cfg.run.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    try:
        path.mkdir(parents=True)
    except OSError as exc:  # EACCES, EROFS, a file where a directory should be, ...
        raise UserError(f"run.root: cannot create the run directory {path} "
                        f"({type(exc).__name__}: {exc.strerror or exc})") from None
    return path
