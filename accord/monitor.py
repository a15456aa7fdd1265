"""`accord monitor`: a local Prometheus for a local run, so the Ray dashboard's Metrics tab
(and Grafana, if you run one) can show accord's metrics next to Ray's.

It runs Debian's `prometheus` binary (`apt-get install prometheus`; `make test` installs it)
in the foreground, bound to 127.0.0.1, with deploy/monitoring/prometheus.yml: that config
scrapes every Ray node listed in the service-discovery file Ray's metrics agent keeps
current. A run whose Ray writes elsewhere (`ray start --temp-dir`) gives --sd-file; the config
is then copied into the data directory with that path in place of the default one.
`accord train` points its embedded Ray's dashboard at http://127.0.0.1:9090 (run.prometheus_host).
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = REPO / "deploy" / "monitoring" / "prometheus.yml"
RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
EXIT_USAGE = 2


def adapted_config(text: str, sd_file: str | Path) -> str:
    """The shipped config with Ray's service-discovery file at `sd_file`; nothing else changes."""
    if RAY_SD_FILE not in text:
        raise ValueError(f"the Prometheus config does not name {RAY_SD_FILE}")
    return text.replace(RAY_SD_FILE, str(sd_file))


def prometheus_command(binary: str, config: Path, data_dir: Path, port: int) -> list[str]:
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=15d"]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def monitor(
    port: int = typer.Option(9090, min=1, max=65535, help="Port on 127.0.0.1 for Prometheus."),
    data_dir: Path = typer.Option(Path("runs/prometheus"), help="Where Prometheus keeps its time series."),
    config: Path = typer.Option(SHIPPED_CONFIG, help="Prometheus config to run."),
    sd_file: str = typer.Option(RAY_SD_FILE, help="Ray's service-discovery file (under Ray's temp dir)."),
) -> None:
    """Run Prometheus on 127.0.0.1 scraping the local Ray's metrics; Ctrl-C stops it."""
    binary = shutil.which("prometheus")
    if binary is None:
        _fail("no `prometheus` on PATH; install it with: sudo apt-get install prometheus")
    if not config.is_file():
        _fail(f"--config: {config} is not a file")
    data_dir.mkdir(parents=True, exist_ok=True)
    if sd_file != RAY_SD_FILE:
        try:
            text = adapted_config(config.read_text(), sd_file)
        except ValueError as exc:
            _fail(f"--sd-file: {exc}")
        config = data_dir / "prometheus.yml"
        config.write_text(text)
    url = f"http://127.0.0.1:{port}"
    typer.echo(f"Prometheus at {url} (scraping the Ray nodes listed in {sd_file}); Ctrl-C stops it")
    typer.echo(f"frames/s: {url}/graph?g0.expr=ray_accord_frames_per_second&g0.range_input=15m")
    # Ctrl-C must stop it even where SIGINT came in ignored: a shell starts background jobs
    # (`accord monitor &` in a script) with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt, so the monitor and its Prometheus would outlive every Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    process = subprocess.Popen(prometheus_command(binary, config.resolve(), data_dir.resolve(), port),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = process.communicate()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        return
    if process.returncode != 0:
        last = (stderr.strip().splitlines() or ["(no output)"])[-1]
        typer.echo(f"error: prometheus exited with code {process.returncode}: {last}", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    sys.exit(typer.run(monitor))
