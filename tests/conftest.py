"""Shared test configuration: the real-broker fixtures are a plugin module."""

pytest_plugins = ["tests.kafka_fixtures"]
