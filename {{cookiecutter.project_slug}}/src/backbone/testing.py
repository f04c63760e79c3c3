"""The in-process test driver for handler unit tests (``backbone.dev.driver``)."""

from backbone.dev.driver import Record, TestDriver

__all__ = ["Record", "TestDriver"]
