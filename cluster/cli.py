"""``vmmsim``: the command line.

Subcommands: ``run`` (a simulation into a run directory), ``validate`` (check a config
and show the placement), ``schema`` (print the config reference).  Bad input -- config
errors, impossible placements, an ``--out`` that holds a finished run -- prints one line
``vmmsim: error: ...`` and exits 2; a failed host exits 1; no tracebacks for either.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cluster.config import ConfigError, describe_schema, load_config
from cluster.host_pool import HostFailure
from cluster.outputs import RunDirError
from cluster.placement import PlacementError, place

EXIT_USAGE = 2
EXIT_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmmsim",
        description="Simulate VMM memory management (ESX-style) on a cluster of hosts.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a simulation", description="Run a simulation.")
    r.add_argument("config", type=Path, help="experiment TOML file")
    r.add_argument("--out", type=Path, required=True, help="run directory to write")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. policy.tax_rate=0 (repeatable)",
    )
    r.add_argument("--force", action="store_true", help="replace a finished run in --out")
    r.add_argument(
        "--address",
        default=None,
        help="join an existing Ray cluster (default: $RAY_ADDRESS, else embedded)",
    )
    r.add_argument(
        "--inprocess",
        action="store_true",
        help="run all hosts in this process without Ray (debugging, reference)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument(
        "--check-invariants",
        action="store_true",
        help="check all invariants after every round (in-process only; slow)",
    )
    r.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for any host call before declaring it failed",
    )

    v = sub.add_parser("validate", help="check a config and print the placement")
    v.add_argument("config", type=Path)
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    sub.add_parser("schema", help="print the config reference (markdown)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ConfigError, PlacementError, RunDirError) as e:
        print(f"vmmsim: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except HostFailure as e:
        print(f"vmmsim: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("vmmsim: interrupted; nothing was written to --out", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "schema":
        print(describe_schema())
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.cmd == "validate":
        placement = place(cfg)
        print(json.dumps({"config_hash": cfg.config_hash(), "placement": placement}, indent=2))
        return 0
    from cluster.runner import run

    place(cfg)  # fail fast, before any Ray start-up
    summary = run(
        cfg,
        args.out,
        backend="inprocess" if args.inprocess else "ray",
        address=args.address,
        force=args.force,
        quiet=args.quiet,
        check_invariants=args.check_invariants,
        timeout_s=args.timeout,
    )
    t = summary["totals"]
    print(
        f"vmmsim: {summary['n_ticks']} ticks ({summary['duration_s']:g} s simulated) -> {args.out}"
        f"  shared {t['shared_mb']:.1f} MB, saved {t['saved_mb']:.1f} MB,"
        f" swap {t['swap_used_mb']:.1f} MB; digest {summary['final_digest'][:16]}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
