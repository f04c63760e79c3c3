"""The HTTP side: the public API, the internal API for peers, and the server for both."""
