"""Wiring: this service's domain{% if cookiecutter.include_read_model == "yes" %}, read model{% endif %} and defaults, handed to the engine."""

from backbone import Service

from {{ cookiecutter.package_name }} import __version__
from {{ cookiecutter.package_name }}.domain import DOMAIN
{%- if cookiecutter.include_read_model == "yes" %}
from {{ cookiecutter.package_name }}.readmodel import PROJECTION
{%- endif %}

SERVICE = Service(
    name="{{ cookiecutter.project_slug }}",
    title="{{ cookiecutter.project_name }}",
    version=__version__,  # of the OpenAPI document, with the title
    domain=DOMAIN,
    plural="{{ cookiecutter.aggregate_plural }}",
    partitions={{ cookiecutter.partitions }},
    standby_replicas={{ cookiecutter.standby_replicas }},
{%- if cookiecutter.include_read_model == "yes" %}
    projection=PROJECTION,
{%- endif %}
)

create_app = SERVICE.app
