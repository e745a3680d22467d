"""The bench's statistics and report; no gateway, no timings asserted."""

from __future__ import annotations

import json
import os

import pytest

from codegen_ray.bench import (
    COLUMNS,
    MEASUREMENTS,
    Measurement,
    Stat,
    Target,
    percentile,
    pss_bytes,
    render_table,
    report,
    table_rows,
)
from codegen_ray.procs import Proc, descendants


def test_nearest_rank_percentiles_of_known_lists() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 50) == 3.0
    assert percentile([3.0], 99) == 3.0
    # Order of the samples does not matter; p50 of an even count is the lower middle.
    assert percentile([40, 10, 30, 20], 50) == 20
    assert percentile([40, 10, 30, 20], 99) == 40
    assert percentile([5, 1, 4, 2, 3], 50) == 3


@pytest.mark.parametrize("pct", [0, -1, 101])
def test_percentile_rejects_out_of_range(pct: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], pct)


def test_stat_needs_samples_and_summarises_them() -> None:
    with pytest.raises(ValueError):
        Stat.of([])
    stat = Stat.of([4, 1, 3, 2])
    assert (stat.n, stat.p50, stat.p99) == (4, 2.0, 4.0)
    assert stat.to_dict() == {
        "n": 4,
        "p50": 2.0,
        "p99": 4.0,
        "min": 1.0,
        "max": 4.0,
        "samples": [4.0, 1.0, 3.0, 2.0],
    }


def test_ratio_is_p50_over_baseline_p50() -> None:
    m = Measurement("x", "ms", Stat.of([30, 30, 30]), Stat.of([10, 10, 10]), "base")
    assert m.ratio == pytest.approx(3.0)
    assert Measurement("x", "ms", Stat.of([1])).ratio is None
    assert Measurement("x", "ms", Stat.of([1]), Stat.of([0])).ratio is None
    assert Measurement("x", "ms", None, Stat.of([1])).ratio is None


def test_absolute_and_relative_targets() -> None:
    fast = Measurement("create", "ms", Stat.of([100, 200, 900]), target=Target(500))
    slow = Measurement("create", "ms", Stat.of([600, 700]), target=Target(500))
    assert fast.passed is True
    assert slow.passed is False
    relative = Target(2.0, relative=True)
    assert Measurement("r", "ms", Stat.of([19]), Stat.of([10]), target=relative).passed is True
    assert Measurement("r", "ms", Stat.of([21]), Stat.of([10]), target=relative).passed is False
    # Nothing to judge by: no target, no samples, or a relative target without a baseline.
    assert Measurement("r", "ms", Stat.of([1])).passed is None
    assert Measurement("r", "ms", None, target=Target(1)).passed is None
    assert Measurement("r", "ms", Stat.of([1]), target=relative).passed is None
    assert Target(500).describe("ms") == "< 500 ms"
    assert relative.describe("ms") == "< 2x"


def sample_measurements() -> list[Measurement]:
    return [
        Measurement(
            "create (warm pool)",
            "ms",
            Stat.of([60, 70, 80]),
            Stat.of([3000]),
            "python -m venv",
            Target(500),
        ),
        Measurement(
            "run.python print(1)",
            "ms",
            Stat.of([72, 75]),
            Stat.of([12, 12]),
            "venv python -c",
            Target(2, relative=True),
            note="runs at nice 15",
        ),
        Measurement("memory per idle session (PSS)", "MiB", None, note="skipped: remote"),
    ]


def test_table_rows_carry_every_column() -> None:
    rows = table_rows(sample_measurements())
    assert all(len(row) == len(COLUMNS) for row in rows)
    create, run, memory = rows
    assert create == (
        "create (warm pool)",
        "3",
        "70.0 ms",
        "80.0 ms",
        "3000 ms",
        "0.023x",
        "< 500 ms",
        "PASS",
        "python -m venv",
    )
    assert run[5:8] == ("6.0x", "< 2x", "FAIL")
    assert memory[1:8] == ("0", "-", "-", "-", "-", "-", "skip")


def test_render_table_aligns_columns_and_lists_notes() -> None:
    text = render_table(sample_measurements())
    lines = text.splitlines()
    header, rule = lines[0], lines[1]
    assert header.split()[:2] == ["name", "n"]
    assert set(rule.replace(" ", "")) == {"-"}
    body = lines[2:5]
    # Right-aligned numbers: every p99 cell ends in the same column.
    p99_end = header.index("p99") + len("p99")
    assert [line[:p99_end].endswith(("ms", "-")) for line in body] == [True, True, True]
    assert "notes:" in lines
    assert "  run.python print(1): runs at nice 15" in lines
    assert "  memory per idle session (PSS): skipped: remote" in lines


def test_report_is_one_json_document_of_a_fixed_shape() -> None:
    doc = report(sample_measurements(), {"iterations": 3, "target": "localhost:1"})
    parsed = json.loads(json.dumps(doc))
    assert parsed["iterations"] == 3
    assert [m["name"] for m in parsed["measurements"]] == [
        "create (warm pool)",
        "run.python print(1)",
        "memory per idle session (PSS)",
    ]
    create, run, memory = parsed["measurements"]
    assert set(create) == {
        "name", "unit", "n", "p50", "p99", "min", "max", "samples",
        "baseline", "ratio", "target", "passed", "note",
    }  # fmt: skip
    assert create["baseline"]["name"] == "python -m venv"
    assert create["baseline"]["p50"] == 3000.0
    assert create["target"] == {"p50_below": 500.0, "relative_to_baseline": False}
    assert create["passed"] is True
    assert run["target"]["relative_to_baseline"] is True
    assert run["passed"] is False
    assert memory == {
        "name": "memory per idle session (PSS)",
        "unit": "MiB",
        "n": 0,
        "baseline": None,
        "ratio": None,
        "target": None,
        "passed": None,
        "note": "skipped: remote",
    }


def test_measurements_are_named_and_unique() -> None:
    names = [name for name, _ in MEASUREMENTS]
    assert len(names) == len(set(names))
    assert {"create", "memory", "run.python", "fs", "pkg.install"} <= set(names)


def test_descendants_walks_the_whole_tree() -> None:
    table = {
        10: Proc(1, "S", "gateway"),
        11: Proc(10, "S", "raylet"),
        12: Proc(11, "S", "ray::SessionActor"),
        13: Proc(12, "R", "python -c"),
        14: Proc(12, "Z", "a zombie"),
        20: Proc(1, "S", "someone else's raylet"),
        21: Proc(20, "S", "ray::SessionActor"),
    }
    assert sorted(descendants(10, table)) == [11, 12, 13]
    assert descendants(13, table) == set()


def test_pss_of_this_process_is_positive() -> None:
    assert pss_bytes(os.getpid()) > 0
