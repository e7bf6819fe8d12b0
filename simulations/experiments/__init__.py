"""Experiments that reproduce the seeds' claims at this scale, each regenerating its RESULTS.md section."""
