"""``python -m training train|evaluate|finetune-sam``: errors in one line, exit status 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

EXIT_USAGE = 2


def _train(argv: Sequence[str]) -> int:
    from training.config import OptionsError, add_option_arguments, load_options
    from training.train import train

    parser = argparse.ArgumentParser(prog="python -m training train")
    add_option_arguments(parser)
    parser.add_argument("--no-resume", action="store_true", help="ignore a saved state")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="save the state and stop after N iterations (resume later)",
    )
    args = parser.parse_args(argv)
    try:
        options = load_options(args.options, overrides=dict(args.set))
        result = train(
            options, resume=not args.no_resume, progress=not args.quiet, stop_after=args.stop_after
        )
    except (OptionsError, FileNotFoundError, ValueError) as exc:
        print(f"training: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if result is None:
        print(f"stopped after {args.stop_after} iterations; run again to resume")
        return 0
    metrics = ", ".join(f"{k} {v:.2f}" for k, v in sorted(result.metrics.items()))
    print(f"wrote {result.weights} (sha256 {result.card.sha256[:16]}); {metrics}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand; each has its own ``--help``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("train", "evaluate", "finetune-sam")
    if not argv or argv[0] not in commands:
        print(f"usage: python -m training {{{','.join(commands)}}} ...", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    command, rest = argv[0], argv[1:]
    if command == "train":
        return _train(rest)
    if command == "evaluate":
        from training.evaluate.run import main as evaluate

        return evaluate(rest)
    from training.sam_finetune import main as finetune

    return finetune(rest)


if __name__ == "__main__":
    sys.exit(main())
