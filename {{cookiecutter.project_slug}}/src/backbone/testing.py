"""The in-process test driver for handler unit tests (``backbone.dev.driver``)."""

from backbone.dev.driver import HandlerError, Record, TestDriver

__all__ = ["HandlerError", "Record", "TestDriver"]
