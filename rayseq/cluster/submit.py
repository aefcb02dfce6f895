"""``rayseq submit`` (and the client behind ``rayseq jobs``, rayseq/cluster/jobs.py): a thin layer over Ray's ``JobSubmissionClient``.

``rayseq submit [--address http://HEAD:8265] -- train --algo erac ...`` uploads the project
directory (the runtime env's ``working_dir``, without runs/, .venv, .git, caches, tests) and runs
``python -m rayseq.cli train ...`` on the cluster's head with that code. ``rayseq jobs
status|logs|stop|list`` look after submitted jobs.

The address defaults to ``$RAY_API_SERVER_ADDRESS`` / ``$RAY_ADDRESS`` (when http), else
http://127.0.0.1:8265 — the local end of ``ray dashboard clusters/gpu.yaml`` (SSH port forwarding;
the job server is never exposed to the internet). Ray token auth: when a token is available
(``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or ~/.ray/auth_token) and ``RAY_AUTH_MODE`` is unset,
token auth is switched on for this process so requests carry the token.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
EXCLUDES = [
    "runs/", ".venv/", "venv/", ".git/", "**/__pycache__/", "*.pyc", "*.egg-info/", ".pytest_cache/",
    "tests/", "build/", "dist/", "*.png", "*.log",
]
"""Paths (gitignore syntax) left out of the uploaded working directory."""
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def project_root() -> Path:
    """The directory holding this checkout's pyproject.toml (what gets uploaded)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise ValueError(f"{root}: not a rayseq checkout (no pyproject.toml); pass --working-dir")
    return root


def resolve_address(address: str | None) -> str:
    """``address``, else ``$RAY_API_SERVER_ADDRESS`` / ``$RAY_ADDRESS`` when an http URL, else the default."""
    if address:
        if not address.startswith(("http://", "https://")):
            raise ValueError(f"--address {address!r}: give the job server's URL, e.g. {DEFAULT_ADDRESS}")
        return address
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


def _enable_token_auth_if_available() -> None:
    """Ray's own switch: RAY_AUTH_MODE=token (and its cached config refreshed) when unset and a token exists."""
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def client(address: str | None = None):
    """A ``JobSubmissionClient`` for ``address`` (token auth on when a token is available)."""
    _enable_token_auth_if_available()
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    try:
        return JobSubmissionClient(url)
    except ConnectionError as err:
        raise ValueError(
            f"no Ray job server at {url} ({err}); start the cluster, then forward its dashboard with "
            f"`ray dashboard clusters/gpu.yaml` (or pass --address)"
        ) from err


def runtime_env(working_dir: str | os.PathLike[str] | None = None, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """The job's runtime env: the project as ``working_dir`` minus :data:`EXCLUDES`."""
    wd = Path(working_dir) if working_dir else project_root()
    if not wd.is_dir():
        raise ValueError(f"--working-dir {wd}: no such directory")
    env = {"working_dir": str(wd), "excludes": list(EXCLUDES)}
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


def entrypoint(rayseq_args: list[str]) -> str:
    """``python -m rayseq.cli ARGS`` (runs the uploaded code, not an installed copy)."""
    if not rayseq_args:
        raise ValueError("nothing to run: give the rayseq command after --, e.g. rayseq submit -- train --algo mle")
    return "python -m rayseq.cli " + shlex.join(rayseq_args)


def submit(rayseq_args: list[str], address: str | None = None, working_dir: str | None = None,
           env_vars: dict[str, str] | None = None, submission_id: str | None = None) -> str:
    """Submit ``rayseq ARGS`` as a Ray job; returns the submission id."""
    c = client(address)
    return c.submit_job(entrypoint=entrypoint(rayseq_args), runtime_env=runtime_env(working_dir, env_vars),
                        submission_id=submission_id, metadata={"rayseq": " ".join(rayseq_args)[:200]})


def wait(job_id: str, address: str | None = None, timeout_s: float | None = None, poll_s: float = 1.0) -> str:
    """Poll until the job is SUCCEEDED/FAILED/STOPPED (or ``timeout_s`` passes); returns the status."""
    c = client(address)
    t0 = time.monotonic()
    while True:
        status = str(c.get_job_status(job_id).value)
        if status in TERMINAL or (timeout_s is not None and time.monotonic() - t0 > timeout_s):
            return status
        time.sleep(poll_s)


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help=f"job server URL (default $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS, else {DEFAULT_ADDRESS})")
    p.add_argument("--working-dir", help="directory uploaded as the job's code (default: this checkout)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the job")
    p.add_argument("--submission-id", help="job id to use (default: generated)")
    p.add_argument("--wait", action="store_true", help="follow the job's logs until it ends; exit 1 unless it succeeded")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the rayseq command to run, e.g. -- train --algo erac")


def run(args: argparse.Namespace) -> int:
    rest = list(args.args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env {item!r}: use KEY=VALUE")
        env[key] = value
    job_id = submit(rest, args.address, args.working_dir, env, args.submission_id)
    print(job_id, flush=True)
    print(f"follow it: rayseq jobs logs --follow {job_id}; stop it: rayseq jobs stop {job_id}", file=sys.stderr)
    if args.wait:
        follow(job_id, args.address)
        status = wait(job_id, args.address)
        print(f"{job_id}: {status}", file=sys.stderr)
        return 0 if status == "SUCCEEDED" else 1
    return 0


def follow(job_id: str, address: str | None) -> None:
    import asyncio

    async def tail() -> None:
        async for lines in client(address).tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
