"""Settings of this service: the engine's, read from the environment, with our defaults."""

from backbone.settings import EngineSettings

SERVICE = "{{ cookiecutter.project_slug }}"
STORE = "{{ cookiecutter.aggregate_name }}"
PLURAL = "{{ cookiecutter.aggregate_plural }}"
PARTITIONS = {{ cookiecutter.partitions }}
STANDBY_REPLICAS = {{ cookiecutter.standby_replicas }}


def load(env: dict[str, str] | None = None) -> EngineSettings:
    return EngineSettings.from_env(SERVICE, STORE, PARTITIONS, STANDBY_REPLICAS, env)
