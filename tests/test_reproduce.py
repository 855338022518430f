"""`tuneops reproduce`'s verdict: a comparison of nothing is a failure, not a pass."""

from pathlib import Path

from tuneops.reproduce import Reproduction


def test_a_reproduction_that_compares_nothing_is_not_a_reproduction(tmp_path: Path) -> None:
    common = {
        "version": "1",
        "workspace": tmp_path,
        "data_version": "abc",
        "recorded_fingerprint": "f",
        "fingerprint": "f",
        "recorded_commit": "c",
        "current_commit": "c",
        "device": "cpu",
        "tolerance": 1e-9,
    }
    assert not Reproduction(metrics={}, **common).same_metrics
    assert "no metric recorded" in Reproduction(metrics={}, **common).table()
    same = Reproduction(metrics={"test_entity_f1": (0.5, 0.5)}, **common)
    assert same.same_metrics and "identical" in same.table()
