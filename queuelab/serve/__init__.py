"""The top layer: the OpenAI-compatible HTTP server and the `queuelab` command; nothing else in the package imports it."""
