"""What every console script shares: ``--config`` / ``--set`` arguments and clean error reporting."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable

from . import Config, available_presets, load_config
from .errors import UserError


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def make_parser(prog: str, description: str, examples: str) -> argparse.ArgumentParser:
    """An argument parser with the shared config options and an examples section in ``--help``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="examples:\n" + examples.strip("\n"),
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--config",
        default="default",
        metavar="NAME_OR_PATH",
        help=f"config preset ({', '.join(available_presets())}) or a YAML file",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one config field; repeatable, e.g. --set sim.image_size=128",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def config_from_args(args: argparse.Namespace, extra_overrides: list[str] | None = None) -> Config:
    """The validated config named by ``--config``, with ``--set`` and then command-specific overrides."""
    return load_config(args.config, list(args.overrides) + list(extra_overrides or []))


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def cli_entry(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a console script: user errors print as one line and exit 2; Ctrl-C exits 130."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return int(main(argv) or 0)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
