"""`voltguard import-sessions` writes events in event-time order unless told otherwise."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from streams.commands.importer import import_sessions

SAMPLE = Path(__file__).parent.parent / "fixtures" / "real_sessions" / "dundee_sample.csv"


def _times(out: Path) -> list[str]:
    return [json.loads(line)["value"]["event_time"] for line in out.read_text().splitlines()]


def _run(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / f"events{len(extra)}.jsonl"
    result = CliRunner().invoke(
        import_sessions,
        [str(SAMPLE), "--mapping", "dundee", "--out", str(out), *extra],
        env={"VOLTGUARD_HASH_SECRET": "s", "VOLTGUARD_BOOTSTRAP_SERVERS": ""},
    )
    assert result.exit_code == 0, result.output
    return out


def test_events_are_time_ordered_by_default_and_per_session_order_is_kept(tmp_path: Path) -> None:
    ordered = _run(tmp_path)
    as_read = _run(tmp_path, "--order", "file")
    times = _times(ordered)
    assert times == sorted(times) and _times(as_read) != times  # the export is not in order
    assert sorted(ordered.read_text().splitlines()) == sorted(as_read.read_text().splitlines())
    first: dict[str, str] = {}
    for line in ordered.read_text().splitlines():
        value = json.loads(line)["value"]
        first.setdefault(value["session_id"], value.get("kind") or value.get("context"))
    assert set(first.values()) == {"started"}  # each session still starts with "started"
