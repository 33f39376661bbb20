from tests.conftest import load_benchmark


def test_loader_overhead_benchmark_times_both_contenders(image_folder, tmp_path):
    module = load_benchmark("loader_overhead")
    report = module.main(["--data", str(image_folder), "--batch-size", "2", "--size", "8", "--repeats", "2",
                          "--json", str(tmp_path / "o.json")])
    assert set(report["rows"]) == {"dali", "loader"}
    assert all(row["ms_per_batch"] > 0 for row in report["rows"].values())
    assert report["ratio"] > 0 and report["checkpoint_ms"] > 0 and (tmp_path / "o.json").is_file()
