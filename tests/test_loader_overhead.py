import json

from tests.conftest import load_benchmark


def test_loader_overhead_benchmark_times_both_contenders(image_folder, tmp_path):
    module = load_benchmark("loader_overhead")
    report = module.main(["--data", str(image_folder), "--batch-size", "2", "--size", "8", "--repeats", "2",
                          "--json", str(tmp_path / "o.json")])
    assert set(report["rows"]) == {"dali", "loader"}
    assert report["samples"] == 11 and report["batch_size"] == 2
    assert report["ratio"] == report["rows"]["loader"]["ms_per_batch"] / report["rows"]["dali"]["ms_per_batch"]
    assert json.loads((tmp_path / "o.json").read_text()) == json.loads(json.dumps(report))
