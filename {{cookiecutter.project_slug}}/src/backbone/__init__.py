"""Customer Backbone engine: event-sourced aggregates on Kafka with state in RocksDB.

The engine is generic: a service hands it a :class:`Domain` (events, aggregate, handlers).
It is copied verbatim into every generated service and updated with ``cruft update``.
"""

from backbone.domain import Context, Domain, DomainError, Event, Handlers, Upcasters
from backbone.service import Service

__version__ = "0.1.0"

__all__ = [
    "Context",
    "Domain",
    "DomainError",
    "Event",
    "Handlers",
    "Service",
    "Upcasters",
    "__version__",
]
