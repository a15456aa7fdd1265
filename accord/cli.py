"""`accord`: train, eval, plot and bench from the command line.

    accord train CONFIG [--set a.b=v ...] [--address ADDR] [--resume RUN_DIR]
    accord eval CHECKPOINT [--episodes N]
    accord plot RUN_DIR [RUN_DIR ...] [--out DIR]
    accord bench throughput|combiners|sac|mt10 [...]

A bad config prints one line naming the field and exits 2 before Ray or any actor starts.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from accord.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multi-task and auxiliary-task RL with gradient combiners, on Ray.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print ratios measured side by side.")
app.add_typer(bench_app, name="bench")

EXIT_CONFIG = 2


def _fail_config(message: str) -> None:
    typer.echo(f"config error: {message}", err=True)
    raise typer.Exit(EXIT_CONFIG)


def _load_or_exit(config: Path, overrides: list[str]):
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        _fail_config(str(exc))


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="Experiment YAML (optional with --resume)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: --set learner.lr=3e-4 (repeatable)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)."),
    resume: Optional[Path] = typer.Option(None, help="Run directory to continue from its newest checkpoint."),
) -> None:
    """Train an agent; Ctrl-C saves a checkpoint and exits."""
    if config is None and resume is None:
        _fail_config("give a CONFIG file or --resume RUN_DIR")
    if resume is not None:
        if not (resume / "config.yaml").is_file():
            _fail_config(f"--resume: {resume} is not a run directory (no config.yaml)")
        config = config or resume / "config.yaml"
    try:
        cfg = load_config(config, set_)
    except ConfigError as exc:
        _fail_config(str(exc))

    from learner.checkpoint import list_checkpoints

    if resume is not None and not list_checkpoints(resume):
        typer.echo(f"error: --resume: {resume} has no checkpoints to continue from", err=True)
        raise typer.Exit(1)

    from accord.driver import new_run_dir, train as run_training  # heavy imports after validation

    run_dir = resume if resume is not None else new_run_dir(cfg)
    result = run_training(cfg, run_dir, address=address, resume=resume is not None)
    raise typer.Exit(result.exit_code)


@app.command("eval")
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file, or a run directory (its newest checkpoint)."),
    episodes: int = typer.Option(10, min=1, help="Episodes per task."),
    greedy: bool = typer.Option(False, help="Take the most likely action instead of sampling."),
) -> None:
    """Play a checkpoint's policy on every task of its run and print the mean return."""
    from accord.evaluate import evaluate_checkpoint

    try:
        results = evaluate_checkpoint(checkpoint, episodes, greedy)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    for task, r in results.items():
        success = "" if r.success_rate is None else f"; success rate {r.success_rate:.2f}"
        typer.echo(f"{task}: mean return {r.mean_return:.2f} ± {r.std_return:.2f} over "
                   f"{r.episodes} episodes{success}")
    rates = [r.success_rate for r in results.values() if r.success_rate is not None]
    if len(rates) > 1:
        typer.echo(f"mean success rate {sum(rates) / len(rates):.2f} over {len(rates)} tasks")


@app.command("plot")
def plot(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR", help="Run directories to overlay (each needs a metrics.csv)."),
    out: Optional[Path] = typer.Option(None, help="Where the PNGs go (default: RUN_DIR/plots of the first run)."),
) -> None:
    """Draw returns, success rates, losses and combiner statistics of runs as PNG files."""
    from accord.plot import plot_runs

    try:
        written = plot_runs(run_dirs, out if out is not None else run_dirs[0] / "plots")
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    for path in written:
        typer.echo(str(path))


@bench_app.command("throughput")
def bench_throughput(
    config: Path = typer.Option(Path("configs/bench.yaml"), help="Experiment config to run the fleet with."),
    seconds: float = typer.Option(30.0, help="Measured seconds per side."),
    learner: bool = typer.Option(False, "--learner", help="Drain with the real learner (CUDA when present) and compare it with a bare forward+backward."),
    set_: list[str] = typer.Option([], "--set", help="Config overrides."),
) -> None:
    """Raw AtariVectorEnv frames/s vs the actor fleet's frames/s with the queue drained."""
    cfg = _load_or_exit(config, set_)
    from bench.throughput import main as throughput_main

    throughput_main(cfg, seconds, use_learner=learner)


@bench_app.command("mt10")
def bench_mt10(
    config: Path = typer.Option(Path("configs/bench_mt10.yaml"), help="Experiment config to run the fleet with."),
    seconds: float = typer.Option(30.0, help="Measured seconds per side."),
    set_: list[str] = typer.Option([], "--set", help="Config overrides."),
) -> None:
    """MT10 env steps/s end to end (actors, replay, SAC learner) vs the raw Meta-World envs."""
    cfg = _load_or_exit(config, set_)
    from bench.mt10 import main as mt10_main

    mt10_main(cfg, seconds)


@bench_app.command("combiners")
def bench_combiners(
    device: str = typer.Option("cpu", help="cpu or cuda."),
    quick: bool = typer.Option(False, help="Few repeats, small sizes: a smoke run."),
) -> None:
    """Each combiner's update time divided by the plain summed-loss update."""
    from bench.combiners import main as combiners_main

    combiners_main(device=device, quick=quick)


@bench_app.command("sac")
def bench_sac(
    device: str = typer.Option("cpu", help="cpu or cuda."),
    quick: bool = typer.Option(False, help="Small networks, one repeat: a smoke run."),
) -> None:
    """Multi-task SAC update time with PCGrad (and a naive per-task loop) divided by plain SAC."""
    from bench.sac import main as sac_main

    sac_main(device=device, quick=quick)


@bench_app.command("peer")
def bench_peer(
    config: Path = typer.Option(Path("configs/bench.yaml"), help="Breakout config (actors, envs, unroll, batch, device)."),
    cartpole: Path = typer.Option(Path("configs/cartpole.yaml"), help="accord's CartPole config."),
    seconds: float = typer.Option(30.0, help="Measured Breakout seconds per side."),
    cartpole_limit: float = typer.Option(300.0, help="Seconds each side gets to reach return 150."),
    set_: list[str] = typer.Option([], "--set", help="Overrides of the Breakout config."),
    cartpole_set: list[str] = typer.Option([], "--cartpole-set", help="Overrides of the CartPole config."),
    skip_breakout: bool = typer.Option(False, help="Only the CartPole race."),
    skip_cartpole: bool = typer.Option(False, help="Only the Breakout throughput."),
) -> None:
    """accord IMPALA vs RLlib IMPALA frames/s on Breakout; seconds to CartPole 150 vs RLlib IMPALA/PPO."""
    cfg = _load_or_exit(config, set_)
    _load_or_exit(cartpole, cartpole_set)
    from bench.peer import main as peer_main

    peer_main(cfg, cartpole, seconds, cartpole_limit, cartpole_set, skip_breakout, skip_cartpole)


def main() -> None:
    app(prog_name="accord")


if __name__ == "__main__":
    sys.exit(main())
