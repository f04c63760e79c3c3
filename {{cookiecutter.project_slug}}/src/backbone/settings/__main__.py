"""``python -m backbone.settings``: print the settings table of the docs."""

from backbone.settings import settings_table

print(settings_table(), end="")
