"""The chaos command line, shared by `python -m tessera.chaos` and `tessera chaos`: a run of any length,
or a saved history checked again."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path

from tessera.chaos.checker import check_all
from tessera.chaos.faults import FAULT_KINDS
from tessera.chaos.history import History
from tessera.chaos.run import (
    AUTO,
    NETWORKS,
    CHECK_BUDGET_SECONDS,
    CHECK_BUDGET_SHARE,
    CLIENTS_DEFAULT,
    RunConfig,
    check_budget_for,
    parse_faults,
    run_chaos,
    summary,
    timeline_png,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of workload under faults (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="the fault schedule's seed (default: a random one)")
    parser.add_argument("--faults", default="kill,pause",
                        help=f"comma-separated fault kinds from {','.join(FAULT_KINDS)}, or none (default kill,pause)")
    parser.add_argument("--clients", type=int, default=CLIENTS_DEFAULT, help="concurrent workload clients")
    parser.add_argument("--network", choices=NETWORKS, default=AUTO,
                        help="netns: each process in a network namespace of its own, network faults made "
                             "with nftables and netem (root); loopback: 127.0.0.1, network faults through "
                             "the transport hook; auto (default): netns where it can be made")
    parser.add_argument("--directory", type=Path, default=None,
                        help="where the cluster, history, summary and timeline go (default: a new temporary one)")
    parser.add_argument("--check-budget", type=float, default=None,
                        help=f"seconds the linearizability search may take (default {CHECK_BUDGET_SECONDS:.0f}, "
                             f"or {CHECK_BUDGET_SHARE} x --duration if that is more)")
    parser.add_argument("--keep-data", action="store_true", help="keep the cluster's data even when the run passes")
    parser.add_argument("--check", type=Path, default=None, metavar="HISTORY",
                        help="only check a saved history.jsonl again (no cluster)")


def run_from_arguments(args: argparse.Namespace) -> int:
    if args.check is not None:
        try:
            history = History.load(args.check)
        except (OSError, ValueError, TypeError, KeyError) as error:
            print(f"tessera chaos: cannot read {args.check}: {error}", file=sys.stderr)
            return 2
        verdicts = check_all(history, args.check_budget or CHECK_BUDGET_SECONDS)
        for verdict in verdicts:
            print(f"{verdict.name}: {verdict.verdict} ({verdict.checked} checked in {verdict.seconds:.2f} s)")
            for problem in verdict.problems:
                print(f"  {problem}")
        return 0 if all(verdict.valid for verdict in verdicts) else 1
    try:
        faults = parse_faults(args.faults)
    except ValueError as error:
        print(f"tessera chaos: {error}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 24)
    directory = args.directory or Path(tempfile.mkdtemp(prefix=f"tessera-chaos-{seed}-"))
    config = RunConfig(duration_seconds=args.duration, seed=seed, faults=faults, directory=directory,
                       clients=args.clients, keep_data=args.keep_data, network=args.network,
                       check_budget_seconds=args.check_budget or check_budget_for(args.duration))
    try:
        run = asyncio.run(run_chaos(config))
    except FileExistsError as error:
        print(f"tessera chaos: {error}", file=sys.stderr)
        return 2
    text = summary(run)
    (directory / "summary.txt").write_text(text + "\n")
    print(text)
    if timeline_png(run, directory / "timeline.png"):
        print(f"timeline: {directory / 'timeline.png'}")
    else:
        print("timeline: not drawn (matplotlib is missing: pip install -e '.[bench]')")
    print(f"history: {directory / 'history.jsonl'}")
    return 0 if run.valid else 1
