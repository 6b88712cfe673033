"""The cron schedule parser and its next tick (shoal.manager.cron.schedule), and the labels (config)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from shoal.errors import InvalidArgument
from shoal.manager.cron.config import cron_config
from shoal.manager.cron.schedule import ScheduleError, parse_duration, parse_schedule
from shoal.testing.sim import service_spec


def ts(*args: int, tz: str = "UTC") -> float:
    return datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


def ticks(text: str, start: float, n: int, tz: str = "") -> list[str]:
    s = parse_schedule(text, tz)
    out, t = [], start
    for _ in range(n):
        t = s.next_after(t)
        out.append(datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S %a"))
    return out


def test_five_fields_every_fifteen_minutes() -> None:
    assert ticks("*/15 * * * *", ts(2026, 1, 1, 0, 7), 3) == [
        "2026-01-01 00:15:00 Thu", "2026-01-01 00:30:00 Thu", "2026-01-01 00:45:00 Thu"]


def test_six_fields_have_seconds_first() -> None:
    assert ticks("30 0 0 * * *", ts(2026, 1, 1), 2) == ["2026-01-01 00:00:30 Thu", "2026-01-02 00:00:30 Fri"]


def test_ranges_lists_steps_and_names() -> None:
    # 9:00 and 17:00 on weekdays in March and December
    got = ticks("0 9,17 * MAR,dec mon-fri", ts(2026, 3, 6, 12), 4)
    assert got == ["2026-03-06 17:00:00 Fri", "2026-03-09 09:00:00 Mon", "2026-03-09 17:00:00 Mon",
                   "2026-03-10 09:00:00 Tue"]
    assert ticks("0 0 1-10/3 * *", ts(2026, 5, 1, 1), 3) == [
        "2026-05-04 00:00:00 Mon", "2026-05-07 00:00:00 Thu", "2026-05-10 00:00:00 Sun"]
    assert ticks("0 0 5/10 * *", ts(2026, 5, 1), 3) == [
        "2026-05-05 00:00:00 Tue", "2026-05-15 00:00:00 Fri", "2026-05-25 00:00:00 Mon"]


def test_weekday_seven_is_sunday_and_day_fields_or() -> None:
    assert ticks("0 0 * * 7", ts(2026, 1, 1), 1) == ["2026-01-04 00:00:00 Sun"]
    # both day fields restricted: the 13th or any Friday
    assert ticks("0 0 13 * fri", ts(2026, 2, 1), 3) == [
        "2026-02-06 00:00:00 Fri", "2026-02-13 00:00:00 Fri", "2026-02-20 00:00:00 Fri"]
    assert ticks("0 0 ? * sun", ts(2026, 1, 1), 1) == ["2026-01-04 00:00:00 Sun"]


def test_descriptors() -> None:
    start = ts(2026, 7, 15, 10, 30)
    assert ticks("@hourly", start, 1) == ["2026-07-15 11:00:00 Wed"]
    assert ticks("@daily", start, 1) == ticks("@midnight", start, 1) == ["2026-07-16 00:00:00 Thu"]
    assert ticks("@weekly", start, 1) == ["2026-07-19 00:00:00 Sun"]
    assert ticks("@monthly", start, 1) == ["2026-08-01 00:00:00 Sat"]
    assert ticks("@yearly", start, 1) == ticks("@annually", start, 1) == ["2027-01-01 00:00:00 Fri"]
    s = parse_schedule("@every 1h30m")
    assert s.next_after(100.0) == 100.0 + 5400
    assert s.latest_until(100.0, 100.0 + 5400 * 3 + 7) == (100.0 + 5400 * 3, 4)


def test_leap_day_and_month_ends() -> None:
    assert ticks("0 0 29 2 *", ts(2026, 1, 1), 1) == ["2028-02-29 00:00:00 Tue"]
    assert ticks("0 0 31 * *", ts(2026, 4, 1), 1) == ["2026-05-31 00:00:00 Sun"]


def test_time_zone_and_daylight_saving() -> None:
    # 02:30 every day in Berlin: 29 March 2026 has no 02:30 (clocks jump 02:00 -> 03:00), so it is skipped
    got = ticks("30 2 * * *", ts(2026, 3, 27), 3, tz="Europe/Berlin")
    assert got == ["2026-03-27 01:30:00 Fri", "2026-03-28 01:30:00 Sat", "2026-03-30 00:30:00 Mon"]
    # 02:30 on 25 October 2026 happens twice in Berlin: it ticks once, at the first (CEST, 00:30 UTC)
    got = ticks("30 2 * * *", ts(2026, 10, 24, 12), 2, tz="Europe/Berlin")
    assert got == ["2026-10-25 00:30:00 Sun", "2026-10-26 01:30:00 Mon"]
    # CRON_TZ= in the text wins over the default
    assert ticks("CRON_TZ=Asia/Tokyo 0 6 * * *", ts(2026, 1, 1), 1, tz="Europe/Berlin") == [
        "2026-01-01 21:00:00 Thu"]


@pytest.mark.parametrize("bad", [
    "* * * *", "* * * * * * *", "61 * * * *", "* 24 * * *", "0 0 0 * *", "* * * 13 *", "*/0 * * * *",
    "5-1 * * * *", "0 0 30 2 *", "@often", "@every", "@every 10", "@every 500ms", "x * * * *", "1,,2 * * * *",
    "? * * * *", "CRON_TZ=Mars/Olympus * * * * *",
])
def test_bad_schedules_are_refused(bad: str) -> None:
    with pytest.raises(ScheduleError):
        parse_schedule(bad)


def test_durations() -> None:
    assert parse_duration("10s") == 10
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5m") == 90
    assert parse_duration("0") == 0
    for bad in ("10", "s", "1d", ""):
        with pytest.raises(ScheduleError):
            parse_duration(bad)


def labelled(labels: dict[str, str], kind: str = "replicated") -> object:
    spec = service_spec("job", kind=kind)
    return cron_config(replace(spec, annotations=replace(spec.annotations, labels=labels)))


def test_labels() -> None:
    assert labelled({}) is None
    assert labelled({"swarm.cronjob.enable": "false", "swarm.cronjob.schedule": "nonsense"}) is None
    cfg = labelled({"swarm.cronjob.enable": "true", "swarm.cronjob.schedule": "@hourly",
                    "swarm.cronjob.skip-running": "true", "swarm.cronjob.replicas": "3"})
    assert cfg is not None
    assert (cfg.replicas, cfg.concurrency, cfg.missed, cfg.deadline) == (3, "forbid", "run-once", None)  # type: ignore[attr-defined]
    cfg = labelled({"swarm.cronjob.enable": "1", "swarm.cronjob.schedule": "@hourly",
                    "com.shoal.cron.missed": "skip"}, kind="replicated-job")
    assert cfg is not None
    assert (cfg.replicas, cfg.concurrency, cfg.deadline) == (None, "allow", 10.0)  # type: ignore[attr-defined]
    for bad in ({"swarm.cronjob.enable": "yes"},
                {"swarm.cronjob.enable": "true"},
                {"swarm.cronjob.enable": "true", "swarm.cronjob.schedule": "* * *"},
                {"swarm.cronjob.enable": "true", "swarm.cronjob.schedule": "@hourly", "swarm.cronjob.replicas": "-1"},
                {"swarm.cronjob.enable": "true", "swarm.cronjob.schedule": "@hourly", "com.shoal.cron.timezone": "X/Y"},
                {"swarm.cronjob.enable": "true", "swarm.cronjob.schedule": "@hourly", "com.shoal.cron.deadline": "-5s"},
                {"swarm.cronjob.enable": "true", "swarm.cronjob.schedule": "@hourly",
                 "com.shoal.cron.concurrency": "sometimes"}):
        with pytest.raises(InvalidArgument, match="invalid label"):
            labelled(bad)
