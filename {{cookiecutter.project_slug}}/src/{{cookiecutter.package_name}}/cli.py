"""``{{ cookiecutter.project_slug }}`` command line: the engine's, for this service."""

import sys

from {{ cookiecutter.package_name }}.app import SERVICE


def main(argv: list[str] | None = None) -> int:
    return SERVICE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
