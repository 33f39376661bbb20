"""benchmarks/rank_cost.py on a tiny world: each rank's pipeline gets its own tars only."""

import json

from tests.conftest import load_benchmark


def test_one_rank_parses_its_share_of_the_indexes(tmp_path):
    out = tmp_path / "rank-cost.json"
    rows = load_benchmark("rank_cost").main(["--worlds", "4", "--shards", "8", "12", "--samples-per-shard", "2",
                                              "--batch-size", "2", "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))
    for row in rows:
        assert row["all_tars"]["tars"] == row["shards"]
        assert row["by_tar"]["tars"] == row["shards"] // 4  # whole tars: shards divisible by the world
        assert row["index_bytes_ratio"] == 4.0  # a quarter of the index bytes, whatever the shard count
        assert row["seconds_ratio"] == row["all_tars"]["seconds"] / row["by_tar"]["seconds"]  # (8, 12 tars: both start)
