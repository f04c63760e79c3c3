"""``{{ cookiecutter.project_slug }}`` command line: run a node, and admin commands."""

import argparse
import sys

import uvicorn

from backbone.settings import SettingsError

from {{ cookiecutter.package_name }} import settings as service_settings
from {{ cookiecutter.package_name }}.app import create_app


def _run(_: argparse.Namespace) -> int:
    settings = service_settings.load()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="{{ cookiecutter.project_slug }}",
        description="{{ cookiecutter.project_name }} service node and admin commands.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a service node (settings from the environment)")
    run.set_defaults(func=_run)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
