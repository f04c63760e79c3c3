"""The domain: what a team edits. Events, the aggregate, and one handler per event."""

from backbone import Domain

from {{ cookiecutter.package_name }}.domain.aggregate import {{ cookiecutter.aggregate_class }}
from {{ cookiecutter.package_name }}.domain.events import EMITTED_EVENTS
from {{ cookiecutter.package_name }}.domain.handlers import handlers, upcasters

DOMAIN = Domain(
    name="{{ cookiecutter.aggregate_name }}",
    aggregate={{ cookiecutter.aggregate_class }},
    handlers=handlers,
    events=EMITTED_EVENTS,
    upcasters=upcasters,
)

__all__ = ["DOMAIN"]
