"""``vmmsim``: the command line.

Subcommands: ``run`` (a simulation into a run directory; a config with ``[sweep]`` runs
every point, :mod:`cluster.sweep`), ``validate`` (check a config and show the placement),
``schema`` (print the config reference; ``--markdown``: all of docs/config.md), ``replay``
and ``resume`` (a recorded run or a checkpoint, :mod:`cluster.rerun`), ``report`` (plots
and a text summary of a run or sweep directory, :mod:`cluster.report`), ``trace convert``
(a Bitbrains CSV into an access trace, :mod:`workloads.bitbrains`), ``trace export`` (one
VM of a recorded run as a trace). Bad input -- config errors, impossible placements, an
``--out`` that holds a finished run -- prints one line ``vmmsim: error: ...`` and exits 2;
a failed host exits 1; no tracebacks for either.  ``--version``; a bare ``vmmsim`` prints the
usage with the commands (exit 2); output to a closed pipe (``vmmsim schema | head``) stops
quietly with exit 141.  A run's last lines list its migrations and repeat its warnings.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import math
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from vmmsim.cluster.config import (
    ConfigError,
    SimConfig,
    config_warnings,
    describe_schema,
    load_config,
    page_state_bytes,
)
from vmmsim.cluster.host_pool import HostFailure
from vmmsim.cluster.outputs import OutputWriteError, RunDirError
from vmmsim.cluster.placement import PlacementError, place
from vmmsim.cluster.replay import ReplayDiverged
from vmmsim.cluster.report import ReportError
from vmmsim.cluster.runner import Terminated, signals_as_exceptions
from vmmsim.cluster.sealed_stream import LogError
from vmmsim.cluster.session import RecoveryFailed
from vmmsim.cluster.sweep import SweepPointFailed, jobs_arg
from vmmsim.workloads.bitbrains import ConvertError

EXIT_USAGE = 2
EXIT_FAILED = 1


def _version() -> str:
    """The installed package's version (``vmmsim --version``)."""
    try:
        return importlib.metadata.version("vmmsim")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "0+unknown"


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line ``vmmsim: error: ...``, exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        where = self.prog.removeprefix("vmmsim").strip()
        text = f"{where}: {message}" if where else message
        print(f"vmmsim: error: {text}".replace("\n", " "), file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _seconds(lo_open: bool) -> typing.Callable[[str], float]:
    """An argparse type: a finite number of seconds, ``> 0`` or ``>= 0``."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            msg = f"expected a number of seconds (got {text!r})"
            raise argparse.ArgumentTypeError(msg) from None
        if not math.isfinite(v) or (v <= 0 if lo_open else v < 0):
            want = "> 0" if lo_open else ">= 0 (0: off)"
            raise argparse.ArgumentTypeError(f"must be a finite number {want} (got {text!r})")
        return v

    parse.__name__ = "seconds"
    return parse


_TIMEOUT = _seconds(lo_open=True)
_EVERY = _seconds(lo_open=False)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="vmmsim",
        description="Simulate VMM memory management (ESX-style) on a cluster of hosts.",
    )
    p.add_argument("--version", action="version", version=f"vmmsim {_version()}")
    # Not required=True: a bare ``vmmsim`` prints the help with the commands (main()).
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

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
        type=_TIMEOUT,
        default=600.0,
        help="seconds to wait for any host call before declaring it failed",
    )
    r.add_argument(
        "--jobs",
        type=jobs_arg,
        default=None,
        help="[sweep] points run at a time (default: the CPUs, at most the points; 1: serial)",
    )
    _add_journal_args(r)

    rr = sub.add_parser(
        "replay",
        help="re-execute a recorded run from its log (verify, or --set: counterfactual)",
        description="Re-execute a run recorded with --record, without the workload "
        "generators.  Without --set: check every host's digest after every tick (exit 1 "
        "at the first difference).  With --set (policy, migration, hosts, VM allocation "
        "keys): the same recorded inputs under another policy, written to --out.",
    )
    rr.add_argument("dir", type=Path, help="run directory recorded with --record")
    rr.add_argument("--out", type=Path, default=None, help="run directory to write")
    rr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _add_backend_args(rr)

    rs = sub.add_parser(
        "resume",
        help="continue a run from a checkpoint",
        description="Continue a run from DIR/checkpoints/t<tick>; the new run directory "
        "holds the metrics from that tick on and the same final digest.",
    )
    rs.add_argument("checkpoint", type=Path, help="a checkpoint directory (…/checkpoints/tNNN)")
    rs.add_argument("--out", type=Path, required=True, help="run directory to write")
    rs.add_argument("--checkpoint-every", type=_EVERY, default=0.0, metavar="SECONDS")
    _add_compression_arg(rs)
    rs.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only keys that leave the past unchanged: simulation.duration_s (longer)",
    )
    _add_backend_args(rs)

    v = sub.add_parser("validate", help="check a config and print the placement")
    v.add_argument("config", type=Path)
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    sc = sub.add_parser("schema", help="print the config reference (markdown)")
    sc.add_argument(
        "--markdown",
        action="store_true",
        help="the whole docs/config.md page: vmmsim schema --markdown > docs/config.md",
    )

    rp = sub.add_parser("report", help="plot a run or sweep directory into DIR/plots/")
    rp.add_argument("dir", type=Path, help="run directory or sweep directory")
    rp.add_argument(
        "--points",
        action="store_true",
        help="for a sweep: also draw each point's plots into DIR/<point>/plots/",
    )

    trace = sub.add_parser("trace", help="access traces: convert a CSV, export a recorded VM")
    tr = trace.add_subparsers(dest="trace_cmd", metavar="COMMAND")
    tc = tr.add_parser("convert", help="Bitbrains GWA-T-12 CSV -> Arrow access trace")
    tc.add_argument("input", type=Path, help="one VM's ';'-separated GWA-T-12 CSV")
    tc.add_argument("--out", type=Path, required=True, help="trace file to write (.arrow)")
    tc.add_argument("--vm-mb", type=float, default=64.0, help="VM memory the trace is for, MB")
    tc.add_argument(
        "--tick-s", type=float, default=None, help="seconds per tick (default: one tick per row)"
    )
    tc.add_argument("--seed", type=int, default=0, help="seed of page order and contents")
    te = tr.add_parser("export", help="one VM's stream from a recorded run -> Arrow trace")
    te.add_argument("record_dir", type=Path, help="run directory written with --record")
    te.add_argument("--vm", required=True, help="the VM whose access stream to export")
    te.add_argument("--out", type=Path, required=True, help="trace file to write (.arrow)")
    return p


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace a finished run in --out")
    p.add_argument("--address", default=None, help="join an existing Ray cluster")
    p.add_argument("--inprocess", action="store_true", help="run without Ray")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--timeout", type=_TIMEOUT, default=600.0, help="host call timeout, seconds")
    p.add_argument(
        "--check-invariants",
        action="store_true",
        help="check all invariants and every guest page's bytes after every round "
        "(in-process only; slow)",
    )


def _add_journal_args(r: argparse.ArgumentParser) -> None:
    r.add_argument(
        "--record",
        action="store_true",
        help="write DIR/record/: inputs, decisions and per-tick digests (for replay)",
    )
    r.add_argument(
        "--checkpoint-every",
        type=_EVERY,
        default=0.0,
        metavar="SECONDS",
        help="write DIR/checkpoints/t<tick>/ every SECONDS of simulated time, rounded up "
        "to a reallocation round boundary; a failed host is then recovered from the last one",
    )
    _add_compression_arg(r, record=True)
    # Fault injection for tests: kill host NAME before the round that runs tick TICK.
    r.add_argument("--kill-host-at", default=None, metavar="NAME:TICK", help=argparse.SUPPRESS)


def _add_compression_arg(p: argparse.ArgumentParser, record: bool = False) -> None:
    p.add_argument(
        "--checkpoint-compression",
        choices=("none", "zstd", "lz4"),
        default="none",
        help="compress checkpoint files (about 4x smaller; default none)",
    )
    if record:
        p.add_argument(
            "--record-compression",
            choices=("none", "zstd", "lz4"),
            default="none",
            help="compress the record log (zstd: about 3x smaller, ~20%% slower in-process)",
        )


def _kill_at(text: str | None, hosts: Sequence[str], n_ticks: int) -> tuple[str, int] | None:
    """``NAME:TICK`` with NAME a host and TICK a tick of the run (``0 .. n_ticks - 1``)."""
    if text is None:
        return None
    name, _, tick = text.rpartition(":")
    if name not in hosts or not tick.isdigit():
        raise ConfigError("--kill-host-at", "must be NAME:TICK with NAME a host", text)
    if int(tick) >= n_ticks:
        raise ConfigError(
            "--kill-host-at", f"tick must be < the run's {n_ticks} ticks (0..{n_ticks - 1})", text
        )
    return name, int(tick)


def _machine_memory() -> int | None:
    """Physical memory of this machine, bytes (None if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits_machine(cfg: SimConfig, joined: bool) -> None:
    """Refuse a run whose page state cannot fit this machine's memory, before simulating:
    all hosts' for an in-process or embedded-Ray run, the largest host's when joining an
    existing Ray cluster (hosts may then run on other machines)."""
    ram = _machine_memory()
    per_host = page_state_bytes(cfg)
    need = max(per_host.values()) if joined else sum(per_host.values())
    if ram is None or need <= ram:
        return
    what = "the largest host's" if joined else "the hosts'"
    raise ConfigError(
        "simulation.content_bytes",
        f"{what} page state needs about {need / 2**30:.1f} GiB ((memory + swap) pages x "
        f"(content_bytes + 16 bytes)); this machine has {ram / 2**30:.1f} GiB: lower "
        "content_bytes or host sizes",
        cfg.simulation.content_bytes,
        source=cfg.source,
    )


def _warn(cfg: SimConfig, *, placement: dict[str, str] | None = None, again: bool = False) -> None:
    """The config's warnings on stderr, one line each (with ``placement``, also the hosts'
    of :func:`cluster.validate_report.host_report`): before anything runs and, with
    ``again``, once more among a run's last lines (after the progress bar)."""
    warnings = config_warnings(cfg)
    if placement is not None:
        from vmmsim.cluster.validate_report import host_report

        warnings += [w for h in host_report(cfg, placement).values() for w in h["warnings"]]
    if again:
        sys.stdout.flush()  # after the run's result lines
    for w in warnings:
        print(f"vmmsim: warning: {w}{' (repeated)' if again else ''}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done; 2 bad input (config, placement, ``--out``, logs); 1 the run
    failed (a host, a replay difference, a write that failed: disk full); 143 SIGTERM,
    130 SIGINT (partial output removed, embedded Ray shut down); 141 stdout's reader went
    away (a closed pipe: quiet).  One line, no traceback."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd is None or (args.cmd == "trace" and args.trace_cmd is None):
        # Bare ``vmmsim`` (or ``vmmsim trace``): the usage with the list of commands.
        sub = parser if args.cmd is None else _subparser(parser, "trace")
        sub.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with signals_as_exceptions():
            status = _dispatch(args)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return status
    except BrokenPipeError:
        return _closed_pipe()
    except (ConfigError, PlacementError, RunDirError, ReportError, ConvertError, LogError) as e:
        print(f"vmmsim: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (HostFailure, ReplayDiverged, RecoveryFailed, OutputWriteError, SweepPointFailed) as e:
        print(f"vmmsim: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Terminated as e:
        what = "terminated" if e.signum != 2 else "interrupted"
        print(f"vmmsim: {what} ({e}); nothing was written to --out", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vmmsim: interrupted (SIGINT); nothing was written to --out", file=sys.stderr)
        return 130


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The subcommand parser ``name`` of ``parser``."""
    for action in parser._subparsers._group_actions:  # noqa: SLF001 - argparse has no API
        if name in getattr(action, "choices", {}):
            return action.choices[name]
    raise KeyError(name)  # pragma: no cover


EXIT_PIPE = 128 + 13  # as if killed by SIGPIPE, like other filters (``cat``)


def _closed_pipe() -> int:
    """Standard output went to a pipe whose reader has gone (``vmmsim schema | head``):
    stop quietly.  Stdout is pointed at /dev/null so that Python's final flush at exit
    does not report the error again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # stdout is not a real file (tests capture it): nothing to flush at exit
    return EXIT_PIPE


CONFIG_DOC = "docs/config.md"


def config_reference_markdown() -> str:
    """The whole text of ``docs/config.md``, generated from the config schema.

    Scope: :func:`describe_schema`'s sections under a page title, with a line saying the page
    is generated and how to regenerate it; ``tests/test_readme.py`` checks that the file in
    the repository equals this text exactly.
    """
    lines = describe_schema().splitlines()
    assert lines[0] == "## Configuration reference", lines[0]
    body = [ln[1:] if ln.startswith("### ") else ln for ln in lines[1:]]
    head = [
        "# Configuration reference",
        "",
        "*Generated by `vmmsim schema --markdown` from the config schema; do not edit by hand. "
        f"Regenerate it with `vmmsim schema --markdown > {CONFIG_DOC}`.*",
        "",
        "A config is TOML: `[simulation]`, `[policy]`, `[migration]`, `[[hosts]]`, `[[vms]]` "
        "with `[vms.workload]`, optional `[[images]]`, `[[migrations]]` and `[sweep]`. Every "
        "key below is listed with its type, default, constraints and meaning. Unknown keys, "
        "wrong types and out-of-range values are errors naming the file and the key. "
        "`vmmsim run/validate --set section.key=value` (and `overrides=` in the Python API) "
        "override any key with the same checks; the paths are those of `[sweep]` below.",
    ]
    return "\n".join(head + body).rstrip("\n") + "\n"


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "schema":
        print(config_reference_markdown() if args.markdown else describe_schema(), end="")
        return 0
    if args.cmd == "report":
        from vmmsim.cluster.report import report

        print(report(args.dir, points=args.points))
        return 0
    if args.cmd == "trace" and args.trace_cmd == "export":
        from vmmsim.cluster.replay import export_trace

        try:
            rows = export_trace(args.record_dir, args.vm, args.out)
        except KeyError as e:
            raise ConvertError(f"{args.record_dir}: {e.args[0]}") from None
        print(f"vmmsim: {rows} accesses of {args.vm} -> {args.out} (use it with boot = false)")
        return 0
    if args.cmd == "trace":
        from vmmsim.workloads.bitbrains import convert

        info = convert(
            str(args.input), str(args.out), vm_mb=args.vm_mb, tick_s=args.tick_s, seed=args.seed
        )
        print(
            f"vmmsim: {info['intervals']} intervals -> {info['ticks']} ticks, {info['rows']} "
            f"accesses, {info['vm_pages']} pages ({args.vm_mb:g} MB) -> {args.out}"
        )
        return 0
    if args.cmd in ("replay", "resume"):
        return _rerun(args)
    cfg = load_config(args.config, args.overrides)
    if args.cmd == "validate":
        from vmmsim.cluster.validate_report import summary_lines, validate_doc

        doc = validate_doc(cfg, place(cfg))
        print(json.dumps(doc, indent=2))
        sys.stdout.flush()
        print("\n".join(summary_lines(doc)), file=sys.stderr)
        return 0
    joined = not args.inprocess and bool(args.address or os.environ.get("RAY_ADDRESS"))
    _check_fits_machine(cfg, joined)
    backend = "inprocess" if args.inprocess else "ray"
    if cfg.sweep and (args.record or args.checkpoint_every or args.kill_host_at):
        raise ConfigError("--record/--checkpoint-every", "not supported with [sweep]")
    if cfg.sweep:
        from vmmsim.cluster.sweep import run_sweep

        _warn(cfg)
        table = run_sweep(
            args.config,
            args.overrides,
            args.out,
            backend=backend,
            address=args.address,
            force=args.force,
            quiet=args.quiet,
            check_invariants=args.check_invariants,
            timeout_s=args.timeout,
            jobs=args.jobs,
        )
        print(f"vmmsim: sweep of {table.num_rows} points -> {args.out} (sweep.parquet)")
        return 0
    from vmmsim.cluster.runner import run
    from vmmsim.cluster.session import RunOptions

    placement = place(cfg)  # fail fast, before any Ray start-up
    _warn(cfg, placement=placement)
    opts = RunOptions(
        record=args.record,
        checkpoint_every_s=args.checkpoint_every,
        checkpoint_compression=args.checkpoint_compression,
        record_compression=args.record_compression,
        kill_host_at=_kill_at(args.kill_host_at, cfg.host_names(), cfg.simulation.n_ticks),
    )
    summary = run(
        cfg,
        args.out,
        opts=opts,
        backend=backend,
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
    _print_migrations(args.out, cfg.simulation.tick_s)
    _warn(cfg, placement=placement, again=True)
    return 0


MAX_MIGRATION_LINES = 10


def migration_lines(rows: Sequence[dict[str, typing.Any]], tick_s: float) -> list[str]:
    """The last lines of a run about its migrations (``migrations.parquet`` rows): counts
    by status, then one line per migration (at most :data:`MAX_MIGRATION_LINES`, those not
    completed first) with the reason of a refusal or abort.  Empty when none was tried."""
    if not rows:
        return []
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    order = ("completed", "refused", "aborted", "unfinished")
    statuses = [*order, *sorted(set(counts) - set(order))]
    head = ", ".join(f"{counts[st]} {st}" for st in statuses if counts.get(st))
    out = [f"vmmsim: migrations: {head} (DIR/migrations.parquet)"]
    ranked = sorted(rows, key=lambda r: r["status"] == "completed")  # stable: run order
    for r in ranked[:MAX_MIGRATION_LINES]:
        what = f"{r['trigger']} {r['vm']} {r['source']} -> {r['destination']}"
        at = f"at {r['start_tick'] * tick_s:g} s"
        if r["status"] == "completed":
            rounds = f"{r['rounds']} round{'' if r['rounds'] == 1 else 's'}"
            how = f"completed in {rounds}, downtime {r['downtime_ms']:.1f} ms"
        elif r["reason"]:
            how = f"{r['status']}: {r['reason']}"
        else:
            how = r["status"]
        out.append(f"vmmsim:   {what} {at}: {how}")
    if len(rows) > MAX_MIGRATION_LINES:
        out.append(f"vmmsim:   ... and {len(rows) - MAX_MIGRATION_LINES} more")
    return out


def _print_migrations(out: Path | None, tick_s: float) -> None:
    """:func:`migration_lines` of the run directory ``out`` on stdout."""
    path = None if out is None else Path(out) / "migrations.parquet"
    if path is None or not path.is_file():
        return
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    for line in migration_lines(rows, tick_s):
        print(line.replace("DIR", str(out), 1))


def _rerun(args: argparse.Namespace) -> int:
    """``vmmsim replay`` and ``vmmsim resume``."""
    from vmmsim.cluster import rerun

    kw = {
        "backend": "inprocess" if args.inprocess else "ray",
        "address": args.address,
        "force": args.force,
        "quiet": args.quiet,
        "timeout_s": args.timeout,
        "check_invariants": args.check_invariants,
    }
    if args.cmd == "resume":
        s = rerun.resume(
            args.checkpoint,
            args.out,
            checkpoint_every_s=args.checkpoint_every,
            checkpoint_compression=args.checkpoint_compression,
            overrides=args.overrides,
            **kw,
        )
        tick = s["resumed_from"]["tick"]
        print(
            f"vmmsim: resumed at tick {tick}, {s['n_ticks'] - tick} ticks -> {args.out};"
            f" digest {s['final_digest'][:16]}"
        )
        _print_migrations(args.out, s["tick_s"])
        return 0
    res = rerun.replay(args.dir, args.out, args.overrides, **kw)
    if res.verified:
        print(f"replay verified: {res.ticks} ticks, digests identical")
    else:
        missing = res.summary["replay"]["vm_steps_without_input"]
        note = f"; VMs past their recorded input: {missing}" if missing else ""
        print(
            f"vmmsim: counterfactual replay ({res.ticks} ticks) -> {args.out};"
            f" digest {res.summary['final_digest'][:16]}{note}"
        )
        _print_migrations(args.out, res.summary["tick_s"])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
