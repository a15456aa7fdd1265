"""`accord`: train, eval, plot and bench from the command line.

    accord train CONFIG [--set a.b=v ...] [--address ADDR] [--resume RUN_DIR]
    accord eval CHECKPOINT [--episodes N]
    accord plot RUN_DIR [RUN_DIR ...] [--out DIR]
    accord bench throughput|combiners|sac|mt10|service|peer|pendulum [...]
    accord monitor [--port 9090]

Bad input anywhere (a config field, a path that is not a run or a checkpoint, an unknown
command or option, a device the machine lacks) prints one line naming it and exits 2, before
Ray or any actor starts where it can be known that early; nothing already on disk is lost.
Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

try:  # recent typer carries its own copy of click, whose exceptions these are
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:
    from click.exceptions import NoArgsIsHelpError, UsageError

from accord.config import ConfigError, load_config
from accord.errors import UserError
from accord.monitor import monitor

EXIT_BAD_INPUT = 2  # every kind of bad input, as for a bad config


@contextmanager
def _one_line_errors():
    """Bad input, raised as `UserError` or found by click while parsing, becomes one line on
    stderr and exit code 2 (click's own usage box spans several lines)."""
    try:
        yield
    except NoArgsIsHelpError:
        raise  # `accord` or `accord bench` alone: the help text is the answer
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "accord"
        message = exc.format_message()
        if exc.ctx is not None and isinstance(exc.ctx.command, TyperGroup) and "command" in message:
            message += f" Commands: {', '.join(exc.ctx.command.list_commands(exc.ctx))}."
        typer.echo(f"error: {where}: {message} (see {where} --help)", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ConfigError as exc:
        typer.echo(f"config error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


class _AccordGroup(TyperGroup):
    """The root command: parsing and running every subcommand happen inside these two calls."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        with _one_line_errors():
            return super().parse_args(ctx, args)

    def invoke(self, ctx):
        with _one_line_errors():
            return super().invoke(ctx)


app = typer.Typer(cls=_AccordGroup, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Multi-task and auxiliary-task RL with gradient combiners, on Ray.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print ratios measured side by side.")
app.add_typer(bench_app, name="bench")
app.command("monitor")(monitor)


def _positive(option: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"{option}: must be > 0, got {value:g}")


def _torch_device(option: str, device: str) -> str:
    """cpu, cuda or cuda:N, and only a CUDA device torch can see (checked before any model is
    built, so a typo or a CPU-only machine costs one line, not a CUDA traceback)."""
    name, _, index = device.partition(":")
    if name not in ("cpu", "cuda") or (index and (name == "cpu" or not index.isdigit())):
        raise UserError(f"{option}: {device!r} is not a device; use cpu, cuda or cuda:N")
    if name == "cuda":
        import torch

        count = torch.cuda.device_count()
        if count == 0:
            raise UserError(f"{option} {device}: torch sees no CUDA device on this machine; use cpu")
        if index and int(index) >= count:
            raise UserError(f"{option} {device}: this machine has {count} CUDA device(s), "
                            f"cuda:0 to cuda:{count - 1}")
    return device


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="Experiment YAML (optional with --resume)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: --set learner.lr=3e-4 (repeatable)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)."),
    resume: Optional[Path] = typer.Option(None, help="Run directory to continue from its newest checkpoint."),
) -> None:
    """Train an agent; Ctrl-C saves a checkpoint and exits."""
    if config is None and resume is None:
        raise ConfigError("give a CONFIG file or --resume RUN_DIR")
    if resume is not None:
        if not resume.is_dir():
            raise ConfigError(f"--resume: no such run directory {resume}")
        if not (resume / "config.yaml").is_file():
            raise ConfigError(f"--resume: {resume} is not a run directory (no config.yaml)")
        config = config or resume / "config.yaml"
    cfg = load_config(config, set_)

    # A glob, not learner.checkpoint (torch): the driver's restore reports what does not load.
    if resume is not None and not any((resume / "checkpoints").glob("ckpt_*.pt")):
        set_aside = len(list((resume / "checkpoints").glob("ckpt_*.pt.corrupt")))
        raise UserError(f"--resume: {resume} has no checkpoints to continue from"
                        + (f" (corrupt ones set aside as *.corrupt: {set_aside})" if set_aside else ""))

    from accord.run_dir import new_run_dir

    run_dir = resume if resume is not None else new_run_dir(cfg)

    from accord.driver import train as run_training  # heavy imports after validation

    try:
        result = run_training(cfg, run_dir, address=address, resume=resume is not None)
    except UserError:
        if resume is None:
            _remove_if_empty(run_dir)  # refused before anything was written: leave no husk
        raise
    raise typer.Exit(result.exit_code)


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()  # fails, and so keeps it, if anything is in it
    except OSError:
        pass


@app.command("eval")
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file, or a run directory (its newest checkpoint)."),
    episodes: int = typer.Option(10, min=1, help="Episodes per task."),
    greedy: bool = typer.Option(False, help="Take the most likely action instead of sampling."),
) -> None:
    """Play a checkpoint's policy on every task of its run and print the mean return.

    Given a run directory, a newest checkpoint that does not load is skipped (one line on
    stderr) for the next older one, as `train --resume` does; the files are left as they are."""
    from accord.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(checkpoint, episodes, greedy,
                                  on_skip=lambda message: typer.echo(message, err=True))
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

    written = plot_runs(run_dirs, out if out is not None else run_dirs[0] / "plots")
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
    _positive("--seconds", seconds)
    cfg = load_config(config, set_)
    if cfg.env.kind != "atari":
        raise ConfigError(f"env.kind: bench throughput compares the fleet with AtariVectorEnv and "
                          f"needs an atari config; {config} has {cfg.env.kind!r}")
    from bench.throughput import main as throughput_main

    throughput_main(cfg, seconds, use_learner=learner)


@bench_app.command("mt10")
def bench_mt10(
    config: Path = typer.Option(Path("configs/bench_mt10.yaml"), help="Experiment config to run the fleet with."),
    seconds: float = typer.Option(30.0, help="Measured seconds per side."),
    set_: list[str] = typer.Option([], "--set", help="Config overrides."),
) -> None:
    """MT10 env steps/s end to end (actors, replay, SAC learner) vs the raw Meta-World envs."""
    _positive("--seconds", seconds)
    cfg = load_config(config, set_)
    if cfg.env.kind != "metaworld":
        raise ConfigError(f"env.kind: bench mt10 runs Meta-World and needs a metaworld config; "
                          f"{config} has {cfg.env.kind!r}")
    from bench.mt10 import main as mt10_main

    mt10_main(cfg, seconds)


@bench_app.command("service")
def bench_service(
    producers: int = typer.Option(8, min=1, help="Synthetic producers (Ray actors without envs)."),
    shards: int = typer.Option(4, min=1, help="Queue shards to compare with one."),
    seconds: float = typer.Option(15.0, min=1.0, help="Measured seconds per shard count."),
    unrolls_per_insert: int = typer.Option(1, min=1, help="Unrolls per insert call."),
    wakeups: bool = typer.Option(False, help="Instead: the queue's wake-up rules under --producers "
                                              "blocked producers (asyncio, no Ray), side by side."),
    learner: bool = typer.Option(False, "--learner", help="Instead: the real learner fed by --producers "
                                                         "synthetic producers against a bare "
                                                         "forward+backward+step, in one run."),
    device: str = typer.Option("auto", help="With --learner: auto (CUDA when present), cpu or cuda."),
) -> None:
    """Unroll inserts/s, MB/s and the learner's wait fraction for 1 and S queue shards."""
    if learner:
        if device != "auto":
            _torch_device("--device", device)
        from bench.service_learner import main as service_learner_main

        service_learner_main(producers, seconds, device)
        return
    if wakeups:
        from bench.queue_wakeups import main as wakeups_main

        wakeups_main(producers, seconds=min(seconds, 5.0))
        return
    from bench.service import main as service_main

    service_main(producers, shards, seconds, unrolls_per_insert)


@bench_app.command("combiners")
def bench_combiners(
    device: str = typer.Option("cpu", help="cpu or cuda."),
    quick: bool = typer.Option(False, help="Few repeats, small sizes: a smoke run."),
    tiny: bool = typer.Option(False, help="The smallest models and batches, one repeat: checks that it runs, measures nothing."),
    case: list[str] = typer.Option([], "--case", help="Only this case: mtsac, cnn or impala (repeatable; default all)."),
) -> None:
    """Each combiner's update time divided by the plain summed-loss update."""
    _torch_device("--device", device)
    from bench.combiners import CASES, main as combiners_main

    unknown = [c for c in case if c not in CASES]
    if unknown:
        raise UserError(f"--case: {', '.join(unknown)} is not a case; use {', '.join(CASES)}")
    combiners_main(device=device, repeats=1 if tiny else None, quick=quick or tiny, tiny=tiny,
                   cases=tuple(case) or CASES)


@bench_app.command("sac")
def bench_sac(
    device: str = typer.Option("cpu", help="cpu or cuda."),
    quick: bool = typer.Option(False, help="Small networks, one repeat: a smoke run."),
) -> None:
    """Multi-task SAC update time with PCGrad (and a naive per-task loop) divided by plain SAC."""
    _torch_device("--device", device)
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
    cfg = load_config(config, set_)
    load_config(cartpole, cartpole_set)  # both configs refused before Ray starts
    from bench.peer import main as peer_main

    peer_main(cfg, cartpole, seconds, cartpole_limit, cartpole_set, skip_breakout, skip_cartpole)


@bench_app.command("pendulum")
def bench_pendulum(
    eval_every: int = typer.Option(500, min=1, help="Env steps past learning starts between evaluations (5 deterministic episodes), both sides: every E updates of SB3 (one per env step), every E x learner.sac.updates_per_step of accord."),
    limit: float = typer.Option(300.0, help="Seconds from a side's process start before it counts as not reached."),
    max_steps: int = typer.Option(30_000, min=1, help="Env steps before a side counts as not reached."),
    seed: int = typer.Option(0, min=0, help="Seed of both sides."),
    sb3_python: Optional[Path] = typer.Option(None, help="A Python with stable-baselines3 (default /tmp/sb3/bin/python; skipped, saying how to make it, when missing)."),
    set_: list[str] = typer.Option([], "--set", help="Overrides of accord's side only, e.g. --set learner.bf16=true (repeatable); run.* is the bench's."),
) -> None:
    """Env steps and seconds to Pendulum-v1 -200: accord SAC (pendulum_defaults.yaml) vs Stable-Baselines3 SAC."""
    _positive("--limit", limit)
    if sb3_python is not None and not sb3_python.is_file():
        raise UserError(f"--sb3-python: no such file {sb3_python}")
    from bench.pendulum import CONFIG, accord_eval_every, main as pendulum_main

    load_config(CONFIG, set_)               # a wrong override is refused before either side starts
    try:
        accord_eval_every(eval_every, tuple(set_))
    except ValueError as err:
        raise UserError(str(err)) from None
    pendulum_main(eval_every, limit, max_steps, seed, sb3_python, tuple(set_))


def main() -> None:
    app(prog_name="accord")


if __name__ == "__main__":
    sys.exit(main())
