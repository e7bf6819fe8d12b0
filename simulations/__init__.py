"""Presets, the simulation runner, benchmarks and result tables for fedelta."""
