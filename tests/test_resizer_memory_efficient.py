"""``LearnableResizer(memory_efficient=True)`` against the plain module on the same weights."""

import copy

import pytest
import torch

from dali_resizer import LearnableResizer
from tests.conftest import (
    assert_double_backward_raises,
    assert_evaluation_equal,
    assert_statistics_hold_when_the_mean_dwarfs_the_spread,
    relative_error,
    resizer_pair,
    saved_bytes,
)
from tests.conftest import training_step as step


def pair(size, chunk_bytes=None, **kwargs):
    """(reference, memory-efficient) resizers with the same weights."""
    variant = {"memory_efficient": True} | ({} if chunk_bytes is None else {"chunk_bytes": chunk_bytes})
    return resizer_pair(size, variant, **kwargs)


CASES = [
    # (input shape, output size, interpolation, antialias, chunk bytes: one image per chunk / all at once)
    ((3, 3, 23, 19), 9, "bilinear", False, 1),
    ((5, 3, 40, 36), (17, 11), "bicubic", True, 1),
    ((4, 3, 30, 30), 15, "nearest", False, 2**30),
    ((6, 3, 32, 32), 16, "bilinear", False, 2 * 16 * 32 * 32 * 4),  # two images per chunk
    ((2, 3, 12, 10), (20, 16), "bilinear", False, 1),  # an upscale
]


@pytest.mark.parametrize(("shape", "size", "interpolation", "antialias", "chunk_bytes"), CASES)
def test_training_step_equals_the_reference(shape, size, interpolation, antialias, chunk_bytes):
    reference, efficient = pair(size, chunk_bytes, interpolation=interpolation, antialias=antialias)
    x = torch.randn(*shape) * 2 + 0.5
    for _ in range(2):  # two steps: the running statistics of the first feed nothing, but must agree
        y0, gx0, gp0 = step(reference, x)
        y1, gx1, gp1 = step(efficient, x)
        torch.testing.assert_close(y1, y0, rtol=0, atol=1e-4)
        torch.testing.assert_close(gx1, gx0, rtol=1e-4, atol=1e-6)
        for name, grad in gp0.items():
            torch.testing.assert_close(gp1[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(dict(efficient.named_buffers())[name], buffer, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("grad", [False, True])
def test_evaluation_equals_the_reference(grad):
    reference, efficient = pair((11, 13), chunk_bytes=1)
    assert_evaluation_equal(reference, efficient, torch.randn(4, 3, 25, 27), grad)


def test_statistics_hold_when_the_mean_dwarfs_the_spread():
    assert_statistics_hold_when_the_mean_dwarfs_the_spread(*pair(8, chunk_bytes=1))


def test_gradcheck_in_training_mode():
    torch.manual_seed(0)
    resizer = LearnableResizer((4, 5), num_filters=3, memory_efficient=True, dtype=torch.float64)
    resizer.chunk_bytes = 1  # one image per chunk: the sums across chunks are part of the check
    x = torch.randn(3, 3, 9, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(resizer, (x,), eps=1e-6, atol=1e-5)


def test_bf16_autocast_is_as_close_as_the_reference():
    """Under bf16 autocast both implementations round differently; each must be as close to the fp32
    result as the other (within a factor of two), on the output and on every parameter gradient."""
    reference, efficient = pair(24, chunk_bytes=1)
    x = torch.randn(4, 3, 48, 48)
    y32, _, g32 = step(copy.deepcopy(reference), x)
    y0, _, g0 = step(reference, x, autocast=True)
    y1, _, g1 = step(efficient, x, autocast=True)
    assert relative_error(y1, y32) <= 2 * relative_error(y0, y32) + 1e-3
    for name in g32:
        assert relative_error(g1[name], g32[name]) <= 2 * relative_error(g0[name], g32[name]) + 1e-3, name


def test_keeps_far_less_for_backward():
    reference, efficient = pair(32, chunk_bytes=1)
    x = torch.randn(4, 3, 64, 64)
    assert saved_bytes(efficient, x) < 0.4 * saved_bytes(reference, x)


@pytest.mark.parametrize("num_res_blocks", [1, 2])
def test_for_inference_folds_every_batchnorm_and_exports(num_res_blocks):
    reference, _ = pair((9, 11), num_res_blocks=num_res_blocks)
    x = torch.randn(4, 3, 23, 29)
    reference(x * 2 + 1)  # running statistics that are not the defaults
    reference.eval()
    served = reference.for_inference()
    assert reference.training is False and not reference.memory_efficient  # the original is left as it was
    norms = [m for m in served.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms == [served.stem[4]]  # only the stem's, applied after the resize
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(served(x), expected, rtol=0, atol=1e-5)
        exported = torch.export.export(served, (x,))
        torch.testing.assert_close(exported.module()(x), expected, rtol=0, atol=1e-5)


def test_double_backward_is_a_clear_error():
    """The chunked stem's backward recomputes features outside the recorded graph."""
    assert_double_backward_raises(pair(6, chunk_bytes=1)[1])
