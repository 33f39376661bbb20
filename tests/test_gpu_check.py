"""benchmarks/gpu_check.sh in its dry mode: every step of the GPU check, tiny, on the CPU, so that the
script's own bugs are found before a GPU lease is spent on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.slow
def test_the_gpu_check_runs_every_step_in_its_dry_mode(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    # (the dry run's step limits are 5 times the GPU plan's 10.7 minutes: a busy machine slows it, never fails it)
    result = subprocess.run(["bash", str(SCRIPT), "--dry", str(tmp_path)], capture_output=True, text=True, env=env,
                            timeout=3600)
    log = (tmp_path / "gpu_check.log").read_text()
    assert result.returncode == 0, result.stdout[-2000:] + log[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    forms = [f"roi-decode-{kind}-{form}" for kind in ("eval", "train") for form in ("whole", "window")]
    steps = ["tests-cuda", "tests-quick", "tests-slow", "throughput", "resizer", "train", *forms]
    assert {name: step["exit"] for name, step in report["steps"].items()} == dict.fromkeys(steps, 0)
    for part in ("tests_cuda", "tests_quick", "tests_slow"):  # (dry: two files; the needs_cuda tests skip)
        assert report[part]["tests"] > 0 and report[part]["failures"] == report[part]["errors"] == 0, part
    assert report["tests_cuda"]["skipped"] == report["tests_cuda"]["tests"]
    names = {row["name"] for row in report["throughput"]["results"]}
    assert {"torch-pil-bilinear", "dali-learned-train", "torchvision-decode-jpeg", "decode-only",
            "dali-learned-resnet18-train", "dali-bilinear-ta-wide", "dali-bilinear-ra", "dali-bilinear-erase",
            "dali-bilinear-mix", "dali-bilinear-recipe", "torch-pil-bilinear-recipe"} <= names
    assert all(row["ratio_to_plain"] > 0 for row in report["throughput"]["results"] if "plain" in row)
    assert report["resizer"] and report["train"][-1]["step"] == 5  # one epoch: 40 images, batch 8
    forms = {form: rows[form] for form, rows in report["roi_decode"].items()}  # (one form per step)
    assert set(forms) == {"eval-whole", "eval-window", "train-whole", "train-window"}
    assert forms["eval-window"]["decoded_mpx_per_image"] < forms["eval-whole"]["decoded_mpx_per_image"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.log"]  # what comes back
