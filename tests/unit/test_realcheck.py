"""The real-data check on the attributed samples: honest real sessions are rarely flagged,
real oddities still are (tests/fixtures/real_sessions/README.md names the sources)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from streams.realcheck import DATASETS, check_files, main

SAMPLES = Path(__file__).parent.parent / "fixtures" / "real_sessions"
HONEST = [
    ("dundee", "dundee_sample.csv"),
    ("dundee", "dundee_ddmm_sample.csv"),
    ("perth_kinross", "perth_kinross_sample.csv"),
    ("boulder", "boulder_sample.csv"),
    ("norway_residential", "norway_residential_sample.csv"),
    ("paris_belib", "paris_belib_sample.csv"),
    ("workplace_dataverse", "workplace_dataverse_sample.csv"),
]


@pytest.mark.parametrize(("dataset", "sample"), HONEST)
def test_honest_real_sessions_stay_below_one_percent_alerts(dataset: str, sample: str) -> None:
    check = check_files(dataset, [SAMPLES / sample])
    # (the boulder sample spans three years: sessions before a gap longer than the billing
    # retention are dropped unbilled, see docs/real-data.md)
    assert check.sessions >= 10 and check.sessions_featured >= 10
    assert check.alert_rate <= 0.01, (check.alert_kinds, check.examples)


def test_impossible_real_sessions_are_still_flagged() -> None:
    # 287.71 kWh in 6 min at a 50 kW rapid charger (Perth & Kinross), among honest sessions
    check = check_files("perth_kinross", [SAMPLES / "perth_kinross_impossible.csv"])
    assert check.alert_kinds == {"energy_above_capability": 1}, check.examples
    assert check.sessions == 11 and len(check.flagged_sessions) == 1
    assert "50 kW" in check.examples["energy_above_capability"]


def test_power_comes_from_the_model_column_where_there_is_one() -> None:
    check = check_files("dundee", [SAMPLES / "dundee_sample.csv"])
    assert {7_000, 50_000} <= set(check.station_power_w.values())


def test_cli_prints_the_table_and_gates_on_the_rate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "boulder").mkdir(parents=True)
    (data / "boulder" / "boulder_sessions_sample.csv").write_bytes(
        (SAMPLES / "boulder_sample.csv").read_bytes()
    )
    result = CliRunner().invoke(main, [str(data), "--datasets", "boulder", "--max-alert-rate", "0"])
    assert result.exit_code == 0, result.output
    assert "boulder" in result.output and "0.000%" in result.output
    bad = CliRunner().invoke(main, [str(data), "--datasets", "dundee"])
    assert bad.exit_code != 0 and "no files" in bad.output
    assert set(DATASETS) >= {"dundee", "boulder"}
