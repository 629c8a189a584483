"""The ``fleetwatch`` command.

- ``fleetwatch demo``: an embedded broker, a simulated fleet with faults, the daemon and
  ``/metrics``; alerts printed live. Ctrl-C stops it.
- ``fleetwatch run --config FILE``: the daemon against an existing broker.
- ``fleetwatch simulate``: publish a simulated fleet to a broker, or record it to a file.
- ``fleetwatch replay FILE [--workers N]``: the pipeline over a recording, as fast as it goes
  (on N worker processes sharded by site).
- ``fleetwatch check-config FILE``: validate a configuration file and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from service.errors import ConfigError, FleetWatchError
from service.replay.ordering import DEFAULT_WINDOW_S

log = logging.getLogger("fleetwatch")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _install_stop_handlers(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform
            loop.add_signal_handler(signum, stop)


# -- run -----------------------------------------------------------------------------


async def _run_daemon(config: Path | None) -> int:
    from config.settings import load_settings
    from service.runtime.daemon import Daemon
    from service.runtime.shards import worker_count
    from service.runtime.workers import Coordinator

    settings = load_settings(config)
    _setup_logging(settings.logging.level)
    workers = worker_count(settings)
    daemon: Daemon | Coordinator = (
        Coordinator(settings, workers) if workers > 1 else Daemon(settings)
    )
    _install_stop_handlers(daemon.stop)
    await daemon.run()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return asyncio.run(_run_daemon(args.config))


def cmd_check_config(args: argparse.Namespace) -> int:
    from config.settings import load_settings
    from detectors import build_detectors
    from service.intake.topics import TopicRouter
    from service.runtime.shards import worker_count

    settings = load_settings(args.config)
    TopicRouter(settings.topics.templates)
    detectors = build_detectors(settings)
    workers = worker_count(settings)
    print(
        f"{args.config}: OK ({len(settings.rules)} rules, detectors: "
        f"{', '.join(d.name for d in detectors) or 'none'}; "
        f"{workers} worker process{'es' if workers > 1 else ''})"
    )
    return 0


# -- replay --------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    import os

    import orjson

    from config.settings import load_settings
    from service.records import AlertRecord, iso_utc
    from service.replay.engine import describe_change
    from service.replay.recording import read_recording
    from service.replay.workers import replay_sharded

    if args.workers < 0:
        raise ConfigError("--workers", "give 1 or more worker processes, or 0 for one per core")
    if args.reorder_window < 0:
        raise ConfigError("--reorder-window", "give 0 or more seconds")
    workers = args.workers or os.cpu_count() or 1
    settings = load_settings(args.config)
    _setup_logging("WARNING" if not args.verbose else "INFO")
    corrupt: list[tuple[int, str]] = []

    class _Printer:
        name = "printer"

        def offer(self, item: object) -> None:
            if isinstance(item, AlertRecord) and not args.quiet:
                if args.json:
                    sys.stdout.write(orjson.dumps(item.to_json_dict()).decode() + "\n")
                else:
                    print(describe_change(item))

    messages = read_recording(
        args.file, on_error=lambda line, reason: corrupt.append((line, reason))
    )
    # one worker: service.replay.engine.replay in this process, as before
    summary = replay_sharded(messages, settings, workers=workers, sinks=[_Printer()],
                             reorder_window_s=args.reorder_window)  # fmt: skip
    span = ""
    if summary.first_ts is not None and summary.last_ts is not None:
        span = f"{iso_utc(summary.first_ts)} .. {iso_utc(summary.last_ts)}"
    on = f" on {workers} worker processes" if workers > 1 else ""
    lines = [
        "",
        f"replayed {summary.messages} messages ({span}){on}",
        f"  readings accepted   {summary.readings}",
        f"  rejected            {summary.rejected} {summary.rejected_by_reason or ''}",
        f"  duplicates dropped  {summary.duplicates}",
        f"  corrupt lines       {len(corrupt)}",
        f"  put back in order   {summary.reordered} (further out than the window: "
        f"{summary.too_late})",
        f"  devices             {summary.devices}",
        f"  alerts opened       {summary.alerts_opened}",
        f"  alerts resolved     {summary.alerts_resolved}",
        f"  alerts still active {len(summary.active)}",
        f"  time                {summary.seconds:.2f} s ({summary.readings_per_s:,.0f} readings/s)",
    ]
    if args.reports is not None:
        args.reports.mkdir(parents=True, exist_ok=True)
        for name, report in summary.reports.items():
            (args.reports / f"{name}.json").write_bytes(
                orjson.dumps(report, option=orjson.OPT_INDENT_2)
            )
        lines.append(
            f"  reports             {', '.join(sorted(summary.reports))} in {args.reports}"
        )
    print("\n".join(lines), file=sys.stderr if args.json else sys.stdout)
    return 0


# -- parser --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetwatch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon against an MQTT broker")
    run.add_argument("--config", type=Path, default=None, help="TOML settings file")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a settings file")
    check.add_argument("config", type=Path)
    check.set_defaults(func=cmd_check_config)

    rep = sub.add_parser("replay", help="run the pipeline over a recorded file")
    rep.add_argument("file", type=Path)
    rep.add_argument("--config", type=Path, default=None)
    rep.add_argument("--json", action="store_true", help="print alert changes as JSON lines")
    rep.add_argument("--quiet", action="store_true", help="print only the summary")
    rep.add_argument("--verbose", action="store_true")
    rep.add_argument(
        "--reports", type=Path, default=None, help="write the detectors' reports to this folder"
    )
    rep.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes, sharded by site (default 1: this process; 0: one per core)",
    )
    rep.add_argument(
        "--reorder-window",
        type=float,
        default=DEFAULT_WINDOW_S,
        metavar="SECONDS",
        help="put messages back in receive-time order within this much recorded time "
        f"(default {DEFAULT_WINDOW_S:.0f}; 0: replay them as read)",
    )
    rep.set_defaults(func=cmd_replay)

    from service.commands.demo import add_demo_parser
    from service.commands.simulate import add_simulate_parser

    add_demo_parser(sub)
    add_simulate_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"fleetwatch: configuration error: {exc}", file=sys.stderr)
        return 2
    except FleetWatchError as exc:
        print(f"fleetwatch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
