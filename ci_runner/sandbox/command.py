"""`ci-runner sandbox`: serve the local FirecREST. Imports only click at module level."""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path
from types import FrameType

import click


@click.command(help="Serve a local FirecREST v2-compatible API (127.0.0.1 only) backed by Slurm or local processes.\n\n"
                    "Prints the `export NAME=value` lines a client needs, then serves until Ctrl-C or SIGTERM.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="Port; 0 picks a free one.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The system's filesystem (default: a temp dir, removed on exit).")
@click.option("--backend", type=click.Choice(["auto", "slurm", "local"]), default="auto", show_default=True,
              help="auto = slurm when sbatch works here, else local subprocesses.")
@click.option("--slots", type=click.IntRange(1), default=2, show_default=True, help="Parallel jobs of the local backend.")
@click.option("--system", default="local", show_default=True, help="The system name served.")
@click.option("--token-ttl", type=click.FloatRange(min=1), default=300.0, show_default=True, help="Token lifetime (s).")
@click.option("--client-id", default=None, help="OAuth2 client id (default: generated).")
@click.option("--client-secret", default=None, help="OAuth2 client secret (default: generated).")
@click.option("--api-key", default=None, help="Also accept this key in the X-API-Key header.")
@click.option("--max-ops-size", type=click.IntRange(1), default=5 * 1024 * 1024, show_default=True,
              help="Ops output/upload limit in bytes (413 beyond).")
@click.option("--command-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds an ops command may run (408 beyond; also when a large output stalls it, as on the "
                   "real server).")
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the export lines to this file (once the server listens).")
@click.option("--latency", type=click.FloatRange(min=0), default=0.0, help="Fault: seconds added to every request.")
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0, help="Fault: probability of a 500/502/503.")
@click.option("--seed", type=int, default=None, help="Fault: RNG seed for --error-rate/--drop-rate.")
@click.option("--burst-every", type=click.IntRange(0), default=0, help="Fault: after every N requests ...")
@click.option("--burst-length", type=click.IntRange(0), default=0, help="Fault: ... answer M requests with 429.")
@click.option("--retry-after", type=click.IntRange(0), default=1, show_default=True, help="Fault: Retry-After of 429s.")
@click.option("--fault-token-ttl", type=click.FloatRange(min=1), default=None, help="Fault: override the token TTL.")
@click.option("--drop-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Fault: probability of closing the connection without a response.")
@click.option("--not-found-window", type=click.FloatRange(min=0), default=0.0,
              help="Fault: seconds after submit during which the job is 'Job not found.'.")
@click.option("--quota-per-minute", type=click.IntRange(0), default=10, show_default=True,
              help="Requests per client per minute, 429 beyond (a site's quota; 0: none).")
@click.option("--pending-delay", type=click.FloatRange(min=0), default=0.0, help="Fault: seconds new jobs stay PENDING.")
@click.option("--reject-qos", "reject_qos", multiple=True, metavar="NAME",
              help="Fault (local backend): refuse submits in QOS NAME (repeatable; 'normal' = jobs without --qos) "
                   "like a QOS limit, which the API answers with 403.")
@click.option("--faults-on-token", is_flag=True, help="Fault: also apply faults to the token endpoint.")
def sandbox(port: int, root: Path | None, backend: str, slots: int, system: str, token_ttl: float,
            client_id: str | None, client_secret: str | None, api_key: str | None, max_ops_size: int,
            command_timeout: float, env_file: Path | None, latency: float, error_rate: float, seed: int | None, burst_every: int,
            burst_length: int, retry_after: int, fault_token_ttl: float | None, drop_rate: float,
            not_found_window: float, quota_per_minute: int, pending_delay: float, reject_qos: tuple[str, ...],
            faults_on_token: bool) -> None:
    """Start the server, print how to reach it, serve until a signal, stop cleanly."""
    from ci_runner.errors import UsageError
    from ci_runner.sandbox import server_module
    from ci_runner.sandbox.faults import Faults

    server = server_module()

    faults = Faults(latency=latency, error_rate=error_rate, seed=seed, burst_every=burst_every,
                    burst_length=burst_length, retry_after=retry_after, token_ttl=fault_token_ttl,
                    drop_rate=drop_rate, not_found_window=not_found_window, quota_per_minute=quota_per_minute,
                    pending_delay=pending_delay, reject_qos=reject_qos, apply_to_token=faults_on_token)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    options = server.SandboxOptions(root=root, backend=backend, port=port, system=system, token_ttl=token_ttl,
                             client_id=client_id, client_secret=client_secret, api_key=api_key, slots=slots,
                             max_ops_size=max_ops_size, command_timeout=command_timeout, faults=faults)
    try:
        handle = server.start_sandbox(options)
    except OSError as error:
        raise UsageError(f"cannot start the sandbox on 127.0.0.1:{port}: {error.strerror or error}") from error
    except ValueError as error:
        raise UsageError(f"cannot start the sandbox: {error}") from error

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        lines = [f"export {name}={shlex.quote(value)}" for name, value in handle.env().items()]
        if env_file is not None:  # whole or not at all: a script waiting for the file never reads half of it
            partial = env_file.with_name(env_file.name + ".partial")
            partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
            partial.replace(env_file)
        click.echo("\n".join(lines))
        click.echo(f"# FirecREST sandbox ({handle.backend_name} backend, root {handle.root}) on {handle.url}: "
                   "eval these lines in a shell, or source --env-file; Ctrl-C stops it.", err=False)
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        handle.stop()
        click.echo("# sandbox stopped", err=True)
