"""benchmarks/augment_ops.py on tiny batches: every operation's pipeline runs and its figures add up."""

import json

import pytest

from tests.conftest import load_benchmark


def test_every_operation_is_timed_against_the_pipeline_that_does_nothing(tmp_path):
    out = tmp_path / "ops.json"
    report = load_benchmark("augment_ops").main(["--batch-size", "2", "--size", "32", "--batches", "1",
                                                 "--repeats", "1", "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = {r["operation"]: r for r in report["rows"]}
    assert {"nothing", "trivial_augment_wide", "rand_augment (n=2, m=9)", "shear_x (warp_affine)"} <= set(rows)
    for r in rows.values():
        assert r["ms_per_batch"] > 0 and r["images_per_s"] == pytest.approx(2000 / r["ms_per_batch"])
        assert r["ms_over_nothing"] == pytest.approx(r["ms_per_batch"] - rows["nothing"]["ms_per_batch"])
