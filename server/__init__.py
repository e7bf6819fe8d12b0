"""The server: its Flower ServerApp, the strategy, aggregation, validation and the version store."""
