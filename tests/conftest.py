"""Shared fixtures: tiny, odd-sized images and shards written by the tests themselves."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def load_benchmark(name: str):
    """Imports ``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _loader_on_the_cpu_unless_needs_cuda(request, monkeypatch):
    """A test not marked ``needs_cuda`` builds its loaders on the CPU unless it passes ``device=``: their
    expectations (pixels against PIL, CPU tensors in the arithmetic) are written for the CPU pipeline,
    and on a GPU host they still hold. The GPU path is what the ``needs_cuda`` tests run."""
    if "needs_cuda" in request.keywords or not torch.cuda.is_available():
        return
    from dali_resizer import DALILoader

    init = DALILoader.__init__

    def on_the_cpu(self, *args, device=None, **kwargs):
        init(self, *args, device="cpu" if device is None else device, **kwargs)

    monkeypatch.setattr(DALILoader, "__init__", on_the_cpu)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


def random_image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    # Smooth content (upsampled noise) so JPEG compression keeps it recognisable.
    coarse = rng.integers(0, 256, size=(max(2, height // 4), max(2, width // 4), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BILINEAR)


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def write_jpeg_folder(root: Path, count: int, classes: int, seed: int = 0) -> Path:
    """An image folder of ``count`` small JPEGs of odd sizes, image i in class folder ``c<i % classes>``."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        path = root / f"c{i % classes}" / f"{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        random_image(rng, 20 + i % 5, 26 + i % 7).save(path)
    return root


# 3 classes, 11 images in all (not a multiple of the batch sizes used), odd and non-square sizes,
# a nested folder, an upper-case extension, a PNG, and files that are not images.
FOLDER_LAYOUT = {
    "cat": ["a.jpg", "b.JPG", "nested/c.jpg", "d.png"],
    "dog": ["e.jpeg", "f.jpg", "g.jpg"],
    "emu": ["h.jpg", "i.jpg", "j.jpg", "k.jpg"],
}


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for cls, names in FOLDER_LAYOUT.items():
        for name in names:
            path = root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            height, width = int(rng.integers(11, 60)), int(rng.integers(17, 80))
            random_image(rng, height, width).save(path, format="PNG" if name.endswith(".png") else "JPEG")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "README").write_text("a file beside the class folders")
    return root


def write_shards(root: Path, counts: list[int], prefix: str = "train", unique_labels: bool = False) -> list[Path]:
    """Writes tar shards with webdataset's own writer; sample i has key sample-<i> and label i % 3 (or i)."""
    import webdataset as wds

    rng = np.random.default_rng(1)
    paths, i = [], 0
    for shard, count in enumerate(counts):
        path = root / f"{prefix}-{shard:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for _ in range(count):
                image = random_image(rng, int(rng.integers(13, 50)), int(rng.integers(19, 70)))
                label = i if unique_labels else i % 3
                sink.write({"__key__": f"sample-{i:05d}", "jpg": encode(image), "cls": str(label).encode()})
                i += 1
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_shards(root, [5, 4, 4])  # 13 samples
    return root


def resizer_pair(size, variant: dict, **kwargs):
    """(reference, variant) ``LearnableResizer``s with the same weights, BatchNorm's affine made
    non-trivial; ``variant``: the attributes set on the second (e.g. ``{"cpu_kernels": True}``)."""
    import copy

    from dali_resizer import LearnableResizer

    torch.manual_seed(0)
    reference = LearnableResizer(size, **kwargs)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    other = copy.deepcopy(reference)
    for name, value in variant.items():
        setattr(other, name, value)
    return reference, other


def training_step(module, x, input_grad=True, autocast=False):
    """Output, input gradient (or None) and parameter gradients of one training step."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(input_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = module(x)
    y.float().square().mean().backward()
    return y.detach().float(), x.grad, {name: p.grad.float() for name, p in module.named_parameters()}


def saved_bytes(module, x) -> int:
    """Bytes autograd keeps for backward in a forward of ``module`` (every saved tensor's storage)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return total


def relative_error(a, b) -> float:
    """Largest absolute difference, relative to the largest magnitude of ``b``."""
    return float((a - b).abs().max() / b.abs().max())


def assert_evaluation_equal(reference, other, x, grad: bool) -> None:
    """After a training forward (running statistics that are not the defaults), both modules in
    evaluation mode give the same outputs and, with ``grad``, the same gradients."""
    for module in (reference, other):
        module.train()
        module(x * 3 + 1)
        module.eval()
    with torch.set_grad_enabled(grad):
        torch.testing.assert_close(other(x), reference(x), rtol=0, atol=1e-5)
    if grad:
        _, gx0, gp0 = training_step(reference, x)
        _, gx1, gp1 = training_step(other, x)
        torch.testing.assert_close(gx1, gx0, rtol=1e-4, atol=1e-6)
        for name, g in gp0.items():
            torch.testing.assert_close(gp1[name], g, rtol=1e-4, atol=1e-6, msg=name)


def assert_statistics_hold_when_the_mean_dwarfs_the_spread(reference, other) -> None:
    """Stem features around 1000 with a spread of about 1: the same training step and running
    variance from both modules (BatchNorm's variance must not cancel)."""
    for module in (reference, other):
        with torch.no_grad():
            module.stem[2].bias.add_(1000.0)
    x = torch.randn(3, 3, 16, 16)
    y0, _, _ = training_step(reference, x)
    y1, _, _ = training_step(other, x)
    torch.testing.assert_close(y1, y0, rtol=0, atol=5e-3)  # (float32 around 1000: an ulp is 6e-5)
    torch.testing.assert_close(other.stem[4].running_var, reference.stem[4].running_var, rtol=1e-3, atol=1e-4)


def assert_double_backward_raises(module) -> None:
    """A second derivative through ``module`` fails loudly (its backward is not differentiable)
    instead of coming out wrong."""
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    (grad,) = torch.autograd.grad(module(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="marked with @once_differentiable"):
        grad.sum().backward()


class S3Server:
    """A real S3 protocol server (moto) in its own process on 127.0.0.1. (In the tests' process it
    would deadlock: DALI's readers make S3 requests while holding the GIL.) ``stop()`` and ``start()``
    keep the port; a restarted server is empty."""

    def __init__(self, env: dict | None = None) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.endpoint, self.env, self.process = f"http://127.0.0.1:{self.port}", env or {}, None

    def start(self) -> None:
        import os
        import subprocess
        import sys
        import time
        import urllib.request

        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env={**os.environ, **self.env})
        deadline = time.monotonic() + 300  # (until it answers, or exits: a loaded machine only slows its start)
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=5)
                return
            except OSError:
                time.sleep(0.1)
        code = self.process.poll()
        self.stop()
        pytest.fail(f"the moto S3 server did not start (exit {code})" if code is not None else
                    "the moto S3 server did not answer in 300 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture(scope="session")
def s3_server():
    """The session's S3 server. DALI's S3 client keeps the endpoint it first saw for the process, so
    every test that DALI reads through uses this one."""
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (the test extra)")
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_endpoint(s3_server):
    return s3_server.endpoint


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch, tmp_path, request):
    """A fresh bucket on the loopback server, with the standard AWS configuration pointing at it and
    nothing else: no profile or credentials file of the machine, no instance metadata lookups."""
    import re

    import boto3

    from dali_resizer import storage

    env = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(storage._S3, "_client", None)  # (a client made with this configuration)
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-bucket"
    client = boto3.client("s3")
    client.create_bucket(Bucket=name)
    return client, name


def upload(client, bucket: str, root: Path, prefix: str) -> str:
    """Copies every file below ``root`` to ``s3://bucket/prefix/...``, indexes after their tars (as
    ``shards make`` publishes them: an index older than its tar is stale); returns that URL."""
    for path in sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: (p.suffix == ".idx", p)):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")
    return f"s3://{bucket}/{prefix}"
