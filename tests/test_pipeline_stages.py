from tests.conftest import load_benchmark


def test_every_stage_is_measured(image_folder):
    rates = load_benchmark("pipeline_stages").main(["--data", str(image_folder), "--batch-size", "4",
                                                    "--batches", "2", "--repeats", "1", "--threads", "1"])
    assert list(rates) == ["decode", "crop-decode", "+ resize", "+ resize, no antialias", "+ normalize"]
    assert all(rate > 0 for rate in rates.values())
