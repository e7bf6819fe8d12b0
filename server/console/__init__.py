"""The operations console: a web application over the version store of a running server."""
