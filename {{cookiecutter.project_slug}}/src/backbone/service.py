"""What a service hands the engine: its domain, its read model projection and its
defaults. The engine builds everything else from it: settings, the HTTP application and
the command line, so a service's own wiring stays a few lines that engine updates never
touch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from typing import TYPE_CHECKING, Generic, TypeVar

import msgspec

from backbone.domain import Domain
from backbone.settings import EngineSettings

if TYPE_CHECKING:
    from litestar import Litestar

    from backbone.readmodel import Projection

A = TypeVar("A", bound=msgspec.Struct)


@dataclass(frozen=True)
class Service(Generic[A]):
    name: str  # the project slug: topic prefix, consumer group and command name
    title: str  # for humans: command help, logs
    domain: Domain[A]
    plural: str  # URL segment: /<plural>/{id}
    partitions: int
    standby_replicas: int
    projection: Projection[A] | None = None  # None: no SQL read model
    version: str | None = None  # None: the installed distribution's (named ``name``)

    def release(self) -> str:
        """The service's version, for the OpenAPI document: ``version`` or the installed one."""
        if self.version is not None:
            return self.version
        try:
            return installed_version(self.name)
        except PackageNotFoundError:
            return "0.0.0"

    def settings(self, env: Mapping[str, str] | None = None) -> EngineSettings:
        """The node's settings: the environment over this service's defaults."""
        return EngineSettings.from_env(
            self.name, self.domain.name, self.partitions, self.standby_replicas, env
        )

    def app(self, settings: EngineSettings | None = None) -> Litestar:
        """The public HTTP application, with the engine started in its lifespan."""
        from backbone.http.app import create_app

        return create_app(self, settings or self.settings())

    def main(self, argv: list[str] | None = None) -> int:
        """The command line: ``run`` a node, and the admin commands."""
        from backbone.cli import main

        return main(self, argv)
