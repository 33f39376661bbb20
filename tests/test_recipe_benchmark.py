"""benchmarks/recipe.py: each variant is built by the train CLI's own functions and probed per module."""

import json

import pytest
import torch

from tests.conftest import load_benchmark


def test_variants_resolve_to_what_they_name():
    bench = load_benchmark("recipe")
    from dali_resizer.train import TrainConfig, resolve_recipe

    for name, (overrides, _) in bench.VARIANTS.items():
        cfg = resolve_recipe(TrainConfig(**overrides))
        assert cfg.optimizer == ("sgd" if name.startswith(("paper", "bilinear-paper")) else "adamw"), name
        assert cfg.resizer == ("bilinear" if name.startswith("bilinear") else "muller" if "muller" in name
                               else "learned"), name


def test_small_input_stem_keeps_the_resolution():
    bench = load_benchmark("recipe")
    from dali_resizer.train import TrainConfig, build_model

    model = build_model(TrainConfig(backbone="resnet18", size=24), num_classes=2)
    bench.small_input_stem(model)
    features = torch.nn.Sequential(*list(model.backbone.children())[:5])  # conv1 ... layer1
    assert features(torch.randn(1, 3, 24, 24)).shape[-2:] == (24, 24)


@pytest.mark.slow
def test_probe_reports_update_sizes_per_module(tmp_path):
    bench = load_benchmark("recipe")
    results = bench.main(["--variants", "paper", "bilinear-adamw", "--epochs", "1", "--train-images", "32",
                          "--val-images", "16", "--input-size", "32", "--size", "8", "--batch-size", "8",
                          "--probe-steps", "2", "--output", str(tmp_path / "r.json")])
    paper, fixed = results["variants"]["paper"], results["variants"]["bilinear-adamw"]
    assert {"resizer.stem", "resizer.head", "backbone.stem", "backbone.fc"} <= set(paper["probe"])
    assert not any(k.startswith("resizer.") for k in fixed["probe"])  # a fixed resize has no parameters
    assert all(v["update"] > 0 and v["grad"] > 0 for v in paper["probe"].values())
    assert len(paper["curve"]) == 1 and 0 <= paper["curve"][0]["val_top1"] <= 100
    assert json.loads((tmp_path / "r.json").read_text())["variants"].keys() == {"paper", "bilinear-adamw"}
