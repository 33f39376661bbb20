"""benchmarks/accuracy.py: the generated set carries its classes where it says, and the runs are paired."""

import json

import numpy as np
import pytest
import torch

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


def test_fine_task_carries_its_class_in_the_grating_alone():
    acc = load_benchmark("accuracy")
    halves = {label: [] for label in range(2)}
    for label in range(2):
        for i in range(12):
            rng = np.random.default_rng([5, label, i])
            image = acc.detail_image(rng, 64, label, task="fine").astype(float).mean(-1)
            halves[label].append(image[:32].mean() > image[32:].mean())
    assert all(0 < sum(v) < len(v) for v in halves.values())  # the blob's half is drawn for both classes


def test_nyquist_cue_cancels_in_an_aliased_downscale():
    """Same draws, other label: the images differ only in the period-2 grating's orientation, which a
    4x bilinear downscale without antialiasing cancels (up to rounding to uint8), and an antialiased
    one cancels away from the border."""
    import torch.nn.functional as F

    acc = load_benchmark("accuracy")

    def down(image, antialias):
        x = torch.from_numpy(image.astype(np.float64)).permute(2, 0, 1)[None]
        return F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False, antialias=antialias)

    for i in range(4):
        a, b = (acc.detail_image(np.random.default_rng([9, 0, i]), 96, label, task="nyquist") for label in (0, 1))
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 10  # far apart at full resolution
        assert (down(a, False) - down(b, False)).abs().max() <= 1.0  # rounding only
        assert (down(a, True) - down(b, True))[..., 1:-1, 1:-1].abs().max() <= 1.0


def test_interval_is_students_t():
    acc = load_benchmark("accuracy")
    mean, low, high = acc.interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.303 * 1.0 / 3**0.5)
    assert np.isnan(acc.interval([5.0])[1])


@pytest.mark.slow
def test_quick_run_reports_every_arm_paired(tmp_path):
    acc = load_benchmark("accuracy")
    results = acc.main(["--quick", "--output", str(tmp_path), "--", "--num-threads", "1"])
    fine, both = results["tasks"]["fine"], results["tasks"]["coarse+fine"]
    assert set(fine["runs"]) == {"learned", "muller", "bilinear", "bilinear-aliased", "control"}
    assert set(both["runs"]) == {"learned", "muller", "bilinear", "bilinear-aliased"}  # the control: "fine" only
    assert all(r[0]["history"][-1]["val_samples"] == 16 for r in fine["runs"].values())  # 2 classes x 8
    assert all(r[0]["history"][-1]["val_samples"] == 16 for r in both["runs"].values())  # 4 classes x 4
    assert set(both["paired"]) == {"learned-bilinear", "muller-bilinear", "bilinear-aliased-bilinear",
                                   "learned-bilinear-aliased", "learned-muller"}
    assert fine["chance_loss"] == pytest.approx(np.log(2)) and both["chance_loss"] == pytest.approx(np.log(4))
    d = both["paired"]["learned-bilinear"]
    assert d["per_seed"] == [both["top1"]["learned"]["per_seed"][0] - both["top1"]["bilinear"]["per_seed"][0]]
    assert set(results["checks"]) >= {"fine: control >= 95% on every seed"}
    assert (tmp_path / "accuracy.json").is_file()
    assert len(list((tmp_path / "set-fine-32-8-8" / "train").rglob("*.png"))) == 16
    assert len(list((tmp_path / "set-coarse+fine-32-4-4" / "train").rglob("*.png"))) == 16
    control = json.loads((tmp_path / "fine-control-seed0" / "metrics.json").read_text())
    assert control and torch.load(tmp_path / "fine-control-seed0" / "checkpoint.pt",
                                  weights_only=False)["args"]["size"] == 32  # full resolution, no resize


@pytest.mark.slow
def test_real_folder_runs_the_same_comparison(tmp_path):
    from dali_resizer import make_synthetic_folder

    acc = load_benchmark("accuracy")
    make_synthetic_folder(tmp_path / "data" / "train", num_classes=3, images_per_class=4, min_side=40, max_side=64)
    make_synthetic_folder(tmp_path / "data" / "val", num_classes=3, images_per_class=2, min_side=40, max_side=64,
                          seed=1)
    results = acc.main(["--quick", "--data", str(tmp_path / "data"), "--arms", "learned", "bilinear",
                        "--output", str(tmp_path / "out"), "--", "--num-threads", "1"])
    task = results["tasks"]["data"]
    assert set(task["runs"]) == {"learned", "bilinear"} and set(task["paired"]) == {"learned-bilinear"}
    assert task["classes"] == 3 and task["chance_loss"] == pytest.approx(np.log(3))
    assert task["runs"]["learned"][0]["history"][-1]["val_samples"] == 6
    args = torch.load(tmp_path / "out" / "data-learned-seed0" / "checkpoint.pt", weights_only=False)["args"]
    assert tuple(args["random_area"]) == (0.08, 1.0)  # a real set keeps the training crops
    assert not list((tmp_path / "out").glob("set-*"))  # nothing generated
