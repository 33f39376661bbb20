"""README's usage block and commands, run as written (the usage block with tiny sizes)."""

import re
from pathlib import Path

import pytest
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


def preemption_block() -> str:
    return re.search(r"<!-- preemption -->\s*```python\n(.*?)```", README, re.S).group(1)


@pytest.mark.slow
def test_the_preemption_block_saves_on_sigterm_and_resumes_exactly(tmp_path, monkeypatch):
    """README's save-and-requeue block, run as a script (tiny sizes; each trained batch's sample indices
    recorded): SIGTERM mid-run, exit 124 with a checkpoint; run again, to the end. Together the two runs
    trained every batch of the three epochs once, in the order of an uninterrupted loader."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from dali_resizer import DALILoader, make_synthetic_folder

    synthetic = "make_synthetic_folder(num_classes=3, images_per_class=4, min_side=40, max_side=64)"
    code = preemption_block()
    for old, new in {
        "make_synthetic_folder()": synthetic,
        "batch_size=32, shuffle=True, size=448": "batch_size=2, shuffle=True, size=32, return_index=True",
        "for images, labels in loader:": "for images, labels, indices in loader:",
        "        optimizer.step()\n": "        optimizer.step()\n        record(epoch, indices)\n",
    }.items():
        assert code.count(old) == 1, f"README's preemption block no longer contains {old!r}"
        code = code.replace(old, new)
    record = tmp_path / "trained.txt"
    # the first run holds after its 8th batch (in its second epoch) until README's SIGTERM handler has set
    # `preempted`: the signal lands mid-epoch however slow the machine is
    assert "    preempted = True\n" in code
    preamble = (f"import time\n\ndef record(epoch, indices):\n    with open({str(record)!r}, 'a') as f:\n"
                f"        f.write(f'{{epoch}} {{indices.tolist()}}\\n')\n"
                f"    if len(open({str(record)!r}).read().splitlines()) == 8:\n"
                f"        while not preempted:\n            time.sleep(0.01)\n\n")
    script = tmp_path / "train.py"
    script.write_text(preamble + code)
    env = {**os.environ, "DALI_RESIZER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not (record.exists() and len(record.read_text().splitlines()) >= 8):
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 124, first.stderr.read()[-2000:]
    assert (tmp_path / "checkpoint.pt").is_file()
    stopped_after = len(record.read_text().splitlines())
    second = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]

    monkeypatch.setenv("DALI_RESIZER_CACHE", str(tmp_path / "cache"))
    data = make_synthetic_folder(num_classes=3, images_per_class=4, min_side=40, max_side=64)
    loader = DALILoader(data, batch_size=2, shuffle=True, size=32, return_index=True)
    expected = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        expected += [f"{epoch} {idx.tolist()}" for _, _, idx in loader]
    trained = record.read_text().splitlines()
    assert stopped_after == 8 and trained == expected
