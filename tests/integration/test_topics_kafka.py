"""`voltguard topics create` against the real broker: idempotent, refuses wrong partitions."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient, NewTopic

from streams.admin import TopicMismatch, create_topics, describe_topics
from streams.cli import main
from topics.catalog import CATALOG, TopicSpec

pytestmark = pytest.mark.kafka


def test_create_is_idempotent_and_matches_the_catalog(
    kafka_bootstrap: str, kafka_admin: AdminClient
) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["topics", "create", "--bootstrap-servers", kafka_bootstrap])
    assert first.exit_code == 0, first.output
    second = runner.invoke(main, ["topics", "create", "--bootstrap-servers", kafka_bootstrap])
    assert second.exit_code == 0, second.output
    assert f"{len(CATALOG)} catalog topics" in second.output and "0 created" in second.output
    states = {s.short: s for s in describe_topics(kafka_admin)}
    assert all(states[short].partitions == spec.partitions for short, spec in CATALOG.items())
    configs = kafka_admin.describe_configs(
        [__import__("confluent_kafka").admin.ConfigResource("topic", CATALOG["stations"].name)]
    )
    [stations_config] = [f.result() for f in configs.values()]
    assert stations_config["cleanup.policy"].value == "compact"


def test_a_mis_partitioned_topic_is_refused_with_a_clear_message(
    kafka_admin: AdminClient, kafka_bootstrap: str
) -> None:
    name = f"voltguard.test.mispartitioned-{uuid.uuid4().hex[:6]}.v1"
    kafka_admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])[
        name
    ].result()
    spec = TopicSpec(name=name, key="session_id", record=None, partitions=6, purpose="test")
    with pytest.raises(TopicMismatch, match=rf"{name} has 2 partitions, the catalog wants 6"):
        create_topics(kafka_admin, specs={"test": spec})


def test_cli_reports_mismatch_as_an_error(
    kafka_admin: AdminClient, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"voltguard.test.cli-mismatch-{uuid.uuid4().hex[:6]}.v1"
    kafka_admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[
        name
    ].result()
    monkeypatch.setitem(
        CATALOG,
        "cli_test",
        TopicSpec(name=name, key="k", record=None, partitions=3, purpose="test"),
    )
    result = CliRunner().invoke(main, ["topics", "create", "--bootstrap-servers", kafka_bootstrap])
    assert result.exit_code == 1
    assert "refusing to use mis-partitioned topics" in result.output and name in result.output
