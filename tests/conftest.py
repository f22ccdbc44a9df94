"""Shared test configuration: ``pytester`` runs the benchmark suite in-process for the integration tests."""

pytest_plugins = ["pytester"]
