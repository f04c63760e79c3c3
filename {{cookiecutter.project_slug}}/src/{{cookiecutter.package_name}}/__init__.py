"""{{ cookiecutter.project_name }}.

An event-sourced service on the Customer Backbone engine.
"""

__version__ = "0.1.0"
