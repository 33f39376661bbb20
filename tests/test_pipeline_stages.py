from tests.conftest import load_benchmark


def test_every_stage_is_measured(image_folder):
    rates = load_benchmark("pipeline_stages").main(["--data", str(image_folder), "--batch-size", "4",
                                                    "--batches", "2", "--repeats", "1", "--threads", "1"])
    assert list(rates) == ["decode", "crop-decode", "+ resize", "+ resize, no antialias", "+ normalize"]


def test_the_roi_decode_benchmark_decodes_fewer_pixels_in_windows(image_folder):
    report = load_benchmark("roi_decode").main(["--data", str(image_folder), "--batch-size", "4", "--size", "8",
                                                "--batches", "1", "--repeats", "1", "--threads", "1"])
    rows = report["rows"]
    assert set(rows) == {"eval-whole", "eval-window", "train-whole", "train-window"}
    # 11-60 x 17-80 images cropped to cover 8 / 0.875: the window leaves out part of most of them
    for kind in ("eval", "train"):
        window, whole = rows[f"{kind}-window"]["decoded_mpx_per_image"], rows[f"{kind}-whole"]["decoded_mpx_per_image"]
        assert window < whole and report["ratios"][kind]["pixel_ratio"] == window / whole


def test_the_shard_labels_benchmark_times_a_real_batch(image_folder):
    report = load_benchmark("shard_labels").main(["--data", str(image_folder), "--batch-size", "4", "--size", "8",
                                                  "--calls", "2", "--repeats", "1", "--threads", "1"])
    assert report["samples"] == 11 and report["batch_size"] == 4  # (every image of the folder, in shards)
    assert report["fraction_of_batch"] == report["labels_ms_per_batch"] / report["loader_ms_per_batch"]


def test_the_index_check_benchmark_times_the_check_against_a_rebuild(tmp_path):
    report = load_benchmark("index_check").main(["--samples", "20", "--image-bytes", "3000", "--repeats", "1",
                                                 "--json", str(tmp_path / "i.json")])
    assert report["samples"] == 20 and set(report["rows"]) == {"index_mismatch", "build_index", "read_whole_tar"}
    assert report["rows"]["index_mismatch"]["vs_index_mismatch"] == 1.0
