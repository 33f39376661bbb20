"""README's usage block and commands, run as written (the usage block with tiny sizes)."""

import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def usage_block() -> str:
    section = README.split("## Usage", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def shrink(code: str) -> str:
    replacements = {
        "make_synthetic_folder()": "make_synthetic_folder(num_classes=3, images_per_class=4, min_side=40, max_side=64)",
        "batch_size=32, shuffle=True, size=448": "batch_size=4, shuffle=True, size=48",
        "batch_size=32, size=448": "batch_size=4, size=48",
        "LearnableResizer(224)": "LearnableResizer(32)",
    }
    for old, new in replacements.items():
        assert code.count(old) >= 1, f"README usage block no longer contains {old!r}"
        code = code.replace(old, new)
    return code


def test_usage_block_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DALI_RESIZER_CACHE", str(tmp_path))
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(shrink(usage_block()), "README.md", "exec"), namespace)
    model, loss = namespace["model"], namespace["loss"]
    assert torch.isfinite(loss)
    resizer = model[0]
    assert resizer.head.weight.grad is not None and resizer.head.weight.grad.abs().sum() > 0
    assert {id(p) for p in resizer.parameters()} <= {
        id(p) for group in namespace["optimizer"].param_groups for p in group["params"]
    }
    assert capsys.readouterr().out.count("epoch ") == 2
    assert namespace["seen"] == len(namespace["val_loader"].dataset)  # every validation image, once


def test_readme_commands():
    main = re.search(r"<!-- main-command -->\s*```bash\n(.*?)\n```", README, re.S).group(1)
    test = re.search(r"<!-- test-command -->\s*```bash\n(.*?)\n```", README, re.S).group(1)
    assert main.endswith("python benchmarks/throughput.py")
    assert test.endswith("python -m pytest")
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "test-command" in ci  # CI runs the command it reads from README, not a copy of it
