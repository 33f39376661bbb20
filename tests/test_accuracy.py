"""benchmarks/accuracy.py: the generated set carries its classes where it says, and the runs are paired."""

import numpy as np
import pytest

from tests.conftest import load_benchmark


@pytest.mark.parametrize("label", range(4))
def test_fine_cue_is_a_grating_above_the_downscaled_nyquist(label):
    acc = load_benchmark("accuracy")
    size = 96
    image = acc.detail_image(np.random.default_rng([7, label, 0]), size, label).astype(np.float64).mean(axis=-1)
    power = np.abs(np.fft.fft2(image - image.mean())) ** 2
    f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2)
    high = f > 1 / 8  # frequencies a 4x downscale cannot represent (periods under 8 px)
    peak_period = 1 / f[high][np.argmax(power[high])]
    low, high_p = acc.FINE_PERIODS[label % 2]
    assert low - 0.2 <= peak_period <= high_p + 0.2


@pytest.mark.parametrize("label", range(4))
def test_coarse_cue_is_the_blob_half(label):
    acc = load_benchmark("accuracy")
    image = acc.detail_image(np.random.default_rng([3, label, 1]), 64, label).astype(np.float64).mean(axis=-1)
    top, bottom = image[:32].mean(), image[32:].mean()
    assert (top > bottom) == (label // 2 == 0)


@pytest.mark.slow
def test_accuracy_runs_are_paired_and_reported(tmp_path):
    acc = load_benchmark("accuracy")
    results = acc.main(["--seeds", "0", "--epochs", "1", "--transfer-epochs", "1", "--input-size", "32", "--size", "8",
                        "--batch-size", "8", "--train-per-class", "4", "--val-per-class", "2",
                        "--output", str(tmp_path)])
    runs = results["runs"]
    assert set(runs) == {"resnet18-bilinear-seed0", "resnet18-learned-seed0",
                         "mobilenet_v2-transferred-resizer-seed0", "mobilenet_v2-random-resizer-seed0"}
    assert all(r["history"][-1]["val_samples"] == 8 for r in runs.values())
    c = results["comparison"]
    assert c["learned_minus_bilinear"] == [c["learned"][0] - c["bilinear"][0]]
    assert (tmp_path / "accuracy.json").is_file()
    assert len(list((tmp_path / "detail-set-32" / "train").rglob("*.png"))) == 16
