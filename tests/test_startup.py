from tests.conftest import load_benchmark


def test_startup_benchmark_measures_each_shard_count(tmp_path):
    module = load_benchmark("startup")
    rows = module.main(["--shards", "2", "5", "--samples-per-shard", "3", "--batch-size", "4",
                        "--json", str(tmp_path / "s.json")])
    assert [(r["shards"], r["samples"]) for r in rows] == [(2, 6), (5, 15)]
    assert all(r["index_build_s"] > 0 and r["loader_init_s"] > 0 and r["first_batch_s"] > 0 for r in rows)
    assert rows[1]["index_bytes"] > rows[0]["index_bytes"] > 0
    assert (tmp_path / "s.json").is_file()
