"""Benchmarks behind ``reslab bench``: throughput measured side by side, reported as tables and JSON."""
