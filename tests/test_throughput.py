"""benchmarks/throughput.py end to end on a tiny folder: every figure is computed and consistent."""

import json
import os

import pytest

from dali_resizer import make_synthetic_folder
from tests.conftest import load_benchmark


@pytest.mark.slow
def test_throughput_reports_ratios(tmp_path):
    data = make_synthetic_folder(tmp_path / "data", num_classes=2, images_per_class=5, min_side=40, max_side=60)
    out = tmp_path / "tp.json"
    report = load_benchmark("throughput").main([
        "--data", str(data), "--threads", "1", "--repeats", "1", "--batch-size", "4", "--size", "16",
        "--input-size", "32", "--learned-images", "4", "--json", str(out),
        "--contenders", "torch-pil-bilinear", "dali-bilinear", "dali-learned", "decode-only", "torchvision-decode-jpeg",
        "dali-bilinear-recipe", "torch-pil-bilinear-recipe",
    ])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = {r["name"]: r for r in report["results"]}
    assert rows["torch-pil-bilinear"]["ratio_to_baseline"] == 1.0
    assert rows["decode-only"]["efficiency_vs_decode"] == 1.0
    for name in ("dali-bilinear", "torch-pil-bilinear", "torchvision-decode-jpeg", "decode-only"):
        # the whole epoch: its first batch before the clock (the pipeline's build, the workers' start)
        assert rows[name]["untimed_first_batch"] == 4 and rows[name]["images"] == 10 - 4, name
    assert rows["dali-learned"]["images"] == 4  # --learned-images: the timed images of a pass
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["peak_host_mib"] > 0
        # the CPU time of one timed pass: no more than every core for its wall time (plus a clock tick
        # per process); a total since start-up, not the pass's own, would break it
        assert r["cpu_s_per_image"] * r["images"] <= r["seconds"][0] * os.cpu_count() + 0.05
        expected = r["images_per_s"] / rows["torch-pil-bilinear"]["images_per_s"]
        assert r["ratio_to_baseline"] == pytest.approx(expected)
    for name, plain in (("dali-bilinear-recipe", "dali-bilinear"), ("torch-pil-bilinear-recipe", "torch-pil-bilinear")):
        # an augmentation's cost: against the same pipeline without it, measured in the same run
        assert rows[name]["plain"] == plain and rows[name]["images"] == 10 - 4
        assert rows[name]["ratio_to_plain"] == pytest.approx(rows[name]["images_per_s"] / rows[plain]["images_per_s"])
    assert "ratio_to_plain" not in rows["dali-bilinear"]
    assert sum(r["cpu_s_per_image"] for r in rows.values()) > 0  # clock ticks: tiny runs may read 0 alone
    env = report["environment"]
    assert env["torch"] and env["dali"] and env["cores"] >= 1


@pytest.mark.slow
def test_throughput_on_shards(tmp_path, monkeypatch):
    monkeypatch.setenv("DALI_RESIZER_CACHE", str(tmp_path / "cache"))
    data = make_synthetic_folder(tmp_path / "data", num_classes=2, images_per_class=5, min_side=40, max_side=60)
    report = load_benchmark("throughput").main([
        "--data", str(data), "--as-shards", "--threads", "1", "--repeats", "1", "--batch-size", "4",
        "--size", "16", "--contenders", "torch-pil-bilinear", "dali-bilinear", "decode-only",
    ])
    rows = {r["name"]: r for r in report["results"]}
    assert list(rows) == ["webdataset-pil-bilinear", "dali-bilinear", "decode-only"]
    assert rows["webdataset-pil-bilinear"]["ratio_to_baseline"] == 1.0
    assert all(r["images"] + r["untimed_first_batch"] == 10 and r["baseline"] == "webdataset-pil-bilinear"
               for r in rows.values())
    assert rows["dali-bilinear"]["data"].endswith("shards-data")
