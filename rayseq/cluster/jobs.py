"""``rayseq jobs status|logs|stop|list [ID]``: look after jobs sent with ``rayseq submit``."""
from __future__ import annotations

import argparse

from rayseq.cluster.submit import DEFAULT_ADDRESS, client, follow, resolve_address


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help=f"job server URL (default as for rayseq submit: {DEFAULT_ADDRESS})")
    p.add_argument("action", choices=["status", "logs", "stop", "list"])
    p.add_argument("job_id", nargs="?", help="submission id (not for list)")
    p.add_argument("--follow", action="store_true", help="logs: stream until the job ends")


def run(args: argparse.Namespace) -> int:
    c = client(args.address)
    if args.action == "list":
        for job in c.list_jobs():
            print(f"{job.submission_id}\t{job.status.value}\t{job.entrypoint}")
        return 0
    if not args.job_id:
        raise ValueError(f"rayseq jobs {args.action}: give the job id")
    try:
        if args.action == "status":
            info = c.get_job_info(args.job_id)
            print(info.status.value + (f"\t{info.message}" if info.message else ""))
        elif args.action == "logs":
            if args.follow:
                follow(args.job_id, args.address)
            else:
                print(c.get_job_logs(args.job_id), end="")
        elif args.action == "stop":
            print("stopped" if c.stop_job(args.job_id) else "not running")
    except RuntimeError as err:
        if "does not exist" in str(err) or "404" in str(err):
            raise ValueError(f"no job {args.job_id!r} on {resolve_address(args.address)}; see `rayseq jobs list`") from err
        raise
    return 0
