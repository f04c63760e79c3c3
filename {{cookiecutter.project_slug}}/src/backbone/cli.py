"""A service's command line: ``run`` a node, and the admin commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import uvloop
from aiokafka import ConsumerRecord

from backbone import kafka_records
from backbone.admin import dlq, repartition
from backbone.admin.bootstrap import bootstrap_offline
from backbone.admin.loss import AdminError, accept_loss
from backbone.admin.repartition import RepartitionError
from backbone.gc_tuning import tune_gc
from backbone.kafka_connection import KafkaAccessError, check_kafka, kafka_connection
from backbone.observability import configure_logging
from backbone.settings import SettingsError
from backbone.snapshot.bootstrap import NoSourceError
from backbone.store import StoreLockedError
from backbone.topics import Topics
from backbone.workers import WORKER_ENV, Supervisor

if TYPE_CHECKING:
    from backbone.service import Service


def _run(service: Service[Any], _: argparse.Namespace) -> int:
    from backbone.http.hot_routes import HotRoutes
    from backbone.http.internal import internal_app
    from backbone.http.serve import listen, serve
    from backbone.observability import tracing_on

    settings = service.settings()
    if settings.workers > 1 and WORKER_ENV not in os.environ:
        configure_logging(settings.log_level)
        return Supervisor(settings, [sys.executable, *sys.orig_argv[1:]], os.environ).run()
    listeners = listen(settings)
    app = service.app(settings)
    # Refused credentials or certificates end the node here, in words, before any client
    # would retry them.
    asyncio.run(check_kafka(kafka_connection(settings)))
    tune_gc()
    kafka_records.install()
    engine = app.state.engine
    # A traced node keeps Litestar's path: its OpenTelemetry middleware makes the spans.
    public = app if tracing_on() else HotRoutes(app, engine, service.plural)
    # uvloop: its transports spend far less CPU per HTTP answer and Kafka request.
    uvloop.run(serve(public, internal_app(engine), settings, engine.hand_off, listeners))
    return 0


def _bootstrap(service: Service[Any], args: argparse.Namespace) -> int:
    settings = service.settings()
    configure_logging(settings.log_level)
    manifest = asyncio.run(
        bootstrap_offline(settings, args.partition, args.source or (), args.timeout)
    )
    print(
        f"installed partition {manifest.partition}: {manifest.total_bytes()} bytes, "
        f"changelog offset {manifest.changelog_offset}; start the node to tail from there"
    )
    return 0


def _accept_loss(service: Service[Any], args: argparse.Namespace) -> int:
    settings = service.settings()
    configure_logging(settings.log_level)
    done = asyncio.run(accept_loss(settings, args.partition, args.node))
    changelog = done["missing_changelog_offsets"]
    events = done["missing_event_offsets"]
    print(
        f"accepted the loss of partition {args.partition}: changelog offsets "
        f"{changelog[0]}..{changelog[1] - 1} and event offsets {events[0]}..{events[1] - 1} "
        "are gone; the partition is rebuilt from what is left and then served"
    )
    return 0


def _dlq_replay(service: Service[Any], args: argparse.Namespace) -> int:
    settings = service.settings()
    configure_logging(settings.log_level)
    if args.offset and args.partition is None:
        print("error: --offset needs --partition (offsets are per partition)", file=sys.stderr)
        return 2
    if args.batch < 1:
        print(f"error: --batch {args.batch}: give 1 or more", file=sys.stderr)
        return 2
    selection = dlq.Selection(
        partition=args.partition, offsets=frozenset(args.offset or ()), reason=args.reason
    )

    def show(record: ConsumerRecord[bytes, bytes]) -> None:
        headers = {k: v.decode(errors="replace") for k, v in record.headers}
        print(
            f"{record.partition}/{record.offset} key={(record.key or b'').decode(errors='replace')}"
            f" reason={headers.get('dlq-reason')} error={headers.get('dlq-error')}"
        )

    async def replay() -> dlq.ReplayReport:
        generation = await repartition.current_generation(settings)
        topics = Topics(settings.service, settings.store, generation.number)
        return await dlq.replay(
            kafka_connection(settings),
            topics,
            selection,
            args.dry_run,
            show,
            replication=settings.replication_factor,
            batch=args.batch,
        )

    report = asyncio.run(replay())
    verb = "would replay" if args.dry_run else "replayed"
    skipped = f"; {report.skipped} replayed before, skipped" if report.skipped else ""
    print(f"{verb} {len(report.replayed)} of {report.scanned} dead letters{skipped}")
    return 0


def _repartition(service: Service[Any], args: argparse.Namespace) -> int:
    settings = service.settings()
    configure_logging(settings.log_level)

    def show(view: dict[str, Any]) -> None:
        print(json.dumps(view, sort_keys=True), flush=True)

    if args.status:
        view = asyncio.run(repartition.status(settings))
    elif args.retire:
        view = asyncio.run(repartition.retire(settings))
    elif args.abort:
        view = asyncio.run(repartition.abort(settings))
    elif args.partitions is None:
        raise ValueError("give --partitions N, or one of --status, --retire, --abort")
    else:
        wait = None if args.no_wait else float(args.timeout)
        view = asyncio.run(repartition.request(settings, args.partitions, wait, show))
    show(view)
    return 0


def _read_model(service: Service[Any], args: argparse.Namespace) -> int:
    from backbone.readmodel import ReadModel
    from backbone.readmodel.model import database_url
    from backbone.readmodel.rebuild import RebuildError, rebuild
    from backbone.readmodel.schema import current_revisions

    settings = service.settings()
    configure_logging(settings.log_level)
    if service.projection is None:
        raise RebuildError(f"{service.name} has no SQL read model")

    def show(line: dict[str, Any]) -> None:
        print(json.dumps(line, sort_keys=True), flush=True)

    # Opening the read model upgrades its schema to the newest revisions.
    model = ReadModel(database_url(settings), service.projection, service.domain.aggregate)
    try:
        if args.readmodel_command == "upgrade":
            show({"event": "read_model_upgraded", **current_revisions(model.engine)})
        else:
            show(asyncio.run(rebuild(settings, model, show)))
    finally:
        model.close()
    return 0


def parser(service: Service[Any]) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog=service.name, description=f"{service.title} service node and admin commands."
    )
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a service node (settings from the environment)")
    run.set_defaults(func=_run)
    dlq_parser = commands.add_parser("dlq", help="dead-letter topic commands")
    dlq_commands = dlq_parser.add_subparsers(dest="dlq_command", required=True)
    replay = dlq_commands.add_parser(
        "replay", help="re-submit dead letters to the events topic after a fix"
    )
    replay.add_argument("--partition", type=int, help="only this DLQ partition")
    replay.add_argument("--offset", type=int, action="append", help="only this offset (repeatable)")
    replay.add_argument("--reason", help="only this dlq-reason, e.g. rejected, invalid_event")
    replay.add_argument("--dry-run", action="store_true", help="list, do not re-submit")
    replay.add_argument(
        "--batch",
        type=int,
        default=dlq.BATCH,
        metavar="N",
        help=f"dead letters per Kafka transaction (default {dlq.BATCH})",
    )
    replay.set_defaults(func=_dlq_replay)
    boot = commands.add_parser(
        "bootstrap", help="replace a stopped node's partition store by a peer's checkpoint"
    )
    boot.add_argument("--partition", type=int, required=True, help="partition to bootstrap")
    boot.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        action="append",
        help="internal URL of a peer, repeatable, tried in order "
        "(default: the group's holders, same zone first)",
    )
    boot.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up after this long (default 300)",
    )
    boot.set_defaults(func=_bootstrap)
    loss = commands.add_parser(
        "accept-loss", help="accept that a partition reported incomplete lost its deleted history"
    )
    loss.add_argument("--partition", type=int, required=True, help="the incomplete partition")
    loss.add_argument("--node", metavar="URL", help="internal URL of its node (default: owner)")
    loss.set_defaults(func=_accept_loss)
    change = commands.add_parser(
        "repartition",
        help="change a live service's partition count (k·N or N/k), with its state",
    )
    what = change.add_mutually_exclusive_group()
    what.add_argument("--partitions", type=int, metavar="M", help="the new partition count")
    what.add_argument("--status", action="store_true", help="show the change under way")
    what.add_argument(
        "--retire",
        action="store_true",
        help="delete the previous generation's topics and stores now",
    )
    what.add_argument("--abort", action="store_true", help="abort a change before its barrier")
    change.add_argument("--no-wait", action="store_true", help="ask, do not follow")
    change.add_argument(
        "--timeout", type=float, default=600, help="follow for this long (default 600 s)"
    )
    change.set_defaults(func=_repartition)
    read_model = commands.add_parser("readmodel", help="SQL read model commands")
    read_model_commands = read_model.add_subparsers(dest="readmodel_command", required=True)
    read_model_commands.add_parser(
        "rebuild",
        help="rebuild the read model from the changelog into side tables while the old one "
        "serves, then swap them in one transaction (progress as JSON lines)",
    ).set_defaults(func=_read_model)
    read_model_commands.add_parser(
        "upgrade", help="migrate the read model's tables to the newest revisions (nodes do, too)"
    ).set_defaults(func=_read_model)
    return root


def main(service: Service[Any], argv: list[str] | None = None) -> int:
    args = parser(service).parse_args(argv)
    try:
        code: int = args.func(service, args)
    except (
        SettingsError,
        KafkaAccessError,
        LookupError,
        ValueError,
        NoSourceError,
        StoreLockedError,
        AdminError,
        RepartitionError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a message, not a traceback, for any other failure
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return code
