"""The ``pacs-node`` command line. Errors are one line naming the problem, exit status 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pacs_node.cli_jobs import CliError, add_commands
from pacs_node.config import ConfigError, Settings, load_settings
from pacs_node.logs import configure_logging

EXIT_USAGE = 2


def _parse_since(text: str) -> datetime:
    """ISO 8601 time (UTC when no offset) or a relative ``30m``/``2h``/``7d``."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    if text and text[-1] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r} is neither an ISO 8601 time nor like 30m, 2h, 7d"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return load_settings(args.config, **{k: v for k, v in overrides.items() if v})


def cmd_serve(args: argparse.Namespace) -> int:
    from pacs_node.serve import StartupError, serve

    node = {"port": args.port} if args.port is not None else {}
    storage = {"data_dir": args.data_dir} if args.data_dir is not None else {}
    settings = _settings(args, node=node, storage=storage)
    configure_logging(args.log_level)
    try:
        serve(settings, log_level=args.log_level, config_path=args.config)
    except StartupError as exc:
        raise CliError(f"cannot start: {exc}") from None
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    problems = []
    data_dir = settings.storage.data_dir
    existing = next((p for p in (data_dir, *data_dir.resolve().parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        problems.append(f"storage.data_dir = {str(data_dir)!r}: no existing parent directory")
    elif not (existing / ".").stat().st_mode & 0o200:
        problems.append(f"storage.data_dir = {str(data_dir)!r}: {existing} is not writable")
    if settings.tls.enabled:
        import ssl

        from pacs_node.receiver.server import make_ssl_context

        try:
            make_ssl_context(settings)
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"tls: the certificate, key or CA file cannot be used: {exc}")
    if problems:
        raise ConfigError(str(args.config or "(defaults)"), problems)
    print(f"{args.config or '(defaults)'}: configuration is valid")
    print(f"  AE title {settings.node.ae_title!r} on {settings.node.host}:{settings.node.port}")
    print(f"  data directory {settings.storage.data_dir.resolve()}")
    print(f"  {len(settings.routing.rules)} routing rules; TLS {settings.tls.enabled}")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from pacs_node.audit.db import current_revision, upgrade

    settings = _settings(args)
    url = settings.database_url
    try:
        if args.db_command == "upgrade":
            upgrade(url)
        revision = current_revision(url)
    except Exception as exc:  # driver and Alembic errors vary; name them, no traceback
        raise CliError(f"audit database: {type(exc).__name__}: {exc}") from None
    print(f"audit database at revision {revision}")
    return 0


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[str(r.get(c, "") if r.get(c) is not None else "") for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


_TABLE_COLUMNS = {
    "associations": (
        "id",
        "started_at",
        "calling_ae",
        "peer_host",
        "tls",
        "state",
        "instances",
        "bytes",
        "reason",
    ),
    "instances": (
        "id",
        "received_at",
        "sop_instance_uid",
        "version",
        "size_bytes",
        "association_id",
    ),
    "jobs": ("id", "created_at", "series_instance_uid", "state", "rule_name", "reason"),
    "events": ("id", "at", "state", "status", "association_id", "sop_instance_uid", "reason"),
    "transitions": ("id", "at", "job_id", "from_state", "state", "actor", "reason"),
    "deliveries": (
        "id",
        "started_at",
        "job_id",
        "destination",
        "state",
        "instances_sent",
        "instances_failed",
        "reason",
    ),
    "commitments": (
        "id",
        "requested_at",
        "job_id",
        "destination",
        "state",
        "instances",
        "committed",
        "failed",
        "reason",
    ),
}


def cmd_audit(args: argparse.Namespace) -> int:
    from pacs_node.audit.db import make_engine, session_factory
    from pacs_node.audit.queries import list_rows

    settings = _settings(args)
    engine = make_engine(settings.database_url)
    try:
        with session_factory(engine)() as session:
            rows = list_rows(session, args.view, since=args.since, state=args.state)
    except Exception as exc:  # driver errors vary; name them, no traceback
        raise CliError(
            f"audit database: {type(exc).__name__}: {str(exc).splitlines()[0]} "
            "(has `pacs-node db upgrade` run?)"
        ) from None
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows, _TABLE_COLUMNS[args.view]))
        print(f"({len(rows)} rows)")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from pacs_node.synth import write_synthetic_scans

    paths = write_synthetic_scans(
        args.out_dir, count=args.count, seed=args.seed, speed_cm_min=args.speed
    )
    print(f"wrote {len(paths)} synthetic whole-body bone scans to {args.out_dir}")
    return 0


def cmd_enhance(args: argparse.Namespace) -> int:
    # The only command that needs torch: it imports the enhancer here, never at start-up.
    from tqdm import tqdm

    from enhancer.checkpoint import CheckpointError
    from enhancer.local import EnhanceFileError, enhance_files
    from enhancer.runtime import Enhancer
    from pacs_node.derived import OutputKind

    for path in args.inputs:
        if not path.is_file():
            raise CliError(f"input {path} is not a file")
    try:
        if args.checkpoint is not None:
            enhancer = Enhancer.from_checkpoint(
                args.checkpoint, device=args.device, profile=args.profile
            )
        else:
            enhancer = Enhancer.default(device=args.device, profile=args.profile)
        done = enhance_files(
            enhancer,
            args.inputs,
            args.out_dir,
            preview=args.preview,
            kind=OutputKind(args.kind),
            progress=lambda paths: tqdm(paths, unit="file", disable=len(paths) < 2),
        )
    except (CheckpointError, EnhanceFileError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from None
    failed = 0
    for item in done:
        verdict = "QC passed" if item.result.qc.passed else f"QC FAILED: {item.result.qc.reason}"
        outputs = ", ".join(str(p) for p in item.outputs)
        print(f"{item.source} -> {outputs} ({item.result.seconds:.2f} s, {verdict})")
        failed += not item.result.qc.passed
    return 1 if failed else 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port {value} is above 65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    from pacs_node import __version__

    parser = argparse.ArgumentParser(
        prog="pacs-node", description="DICOM node that enhances rapid pediatric bone scans."
    )
    parser.add_argument("--version", action="version", version=f"pacs-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, help="TOML settings file (see deploy/)")
        return p

    serve = with_config(sub.add_parser("serve", help="run the DICOM receiver"))
    serve.add_argument("--port", type=_port, help="listen port, over the config")
    serve.add_argument("--data-dir", type=Path, help="data directory, over the config")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    serve.set_defaults(func=cmd_serve)

    check = with_config(sub.add_parser("check-config", help="validate the settings"))
    check.set_defaults(func=cmd_check_config)

    db = sub.add_parser("db", help="audit database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    for name, text in (("upgrade", "migrate to the newest schema"), ("current", "show revision")):
        with_config(db_sub.add_parser(name, help=text)).set_defaults(func=cmd_db)

    audit = sub.add_parser("audit", help="search the audit database")
    audit_sub = audit.add_subparsers(dest="view", required=True)
    for view in _TABLE_COLUMNS:
        p = with_config(audit_sub.add_parser(view, help=f"list {view}"))
        p.add_argument("--since", type=_parse_since, help="ISO time or 30m/2h/7d")
        p.add_argument("--state", help="only rows in this state / outcome / kind")
        p.add_argument("--json", action="store_true", help="JSON array instead of a table")
        p.set_defaults(func=cmd_audit)

    synth = sub.add_parser("synth", help="write synthetic whole-body bone scans")
    synth.add_argument("out_dir", type=Path)
    synth.add_argument("--count", type=_positive_int, default=1)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--speed", type=int, choices=[20, 40, 60], default=20, help="cm/min")
    synth.set_defaults(func=cmd_synth)

    enhance = sub.add_parser(
        "enhance",
        help="enhance NM DICOM files with the model (exit 1 if a result fails QC)",
    )
    enhance.add_argument("inputs", type=Path, nargs="+", metavar="INPUT")
    enhance.add_argument("-o", "--out-dir", type=Path, required=True, dest="out_dir")
    enhance.add_argument("--checkpoint", type=Path, help="model .safetensors (default: shipped)")
    enhance.add_argument("--profile", choices=["fast", "cascade"], default="fast")
    enhance.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    enhance.add_argument(
        "--kind",
        choices=["multiframe-sc", "single-frame-sc", "derived-nm"],
        default="multiframe-sc",
        help="derived DICOM object type",
    )
    enhance.add_argument("--preview", action="store_true", help="PNG previews, not DICOM")
    enhance.set_defaults(func=cmd_enhance)

    def with_settings(command: Any) -> Any:
        def run(args: argparse.Namespace) -> int:
            settings = _settings(args)
            if hasattr(args, "log_level"):
                configure_logging(args.log_level)
            return int(command(args, settings))

        return run

    add_commands(sub, with_config, with_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"pacs-node: invalid configuration in {exc.source}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"pacs-node: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
