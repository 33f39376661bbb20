import io
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dali_resizer import Interpolation, LearnableResizer


def conv_weight_count(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(("num_res_blocks", "expected"), [(1, 11_872), (2, 16_480), (3, 21_088)])
def test_conv_weights_match_paper(num_res_blocks, expected):
    assert conv_weight_count(LearnableResizer(224, num_res_blocks=num_res_blocks)) == expected


def test_total_parameters_about_12k():
    total = sum(p.numel() for p in LearnableResizer(224).parameters())
    assert 11_872 < total < 12_100


@pytest.mark.parametrize(
    ("in_shape", "size", "out_hw"),
    [
        ((1, 3, 17, 11), 5, (5, 5)),  # batch of 1, odd, downscale
        ((2, 3, 33, 47), (13, 7), (13, 7)),  # non-square output, height first
        ((2, 3, 8, 6), (15, 21), (15, 21)),  # upscale
        ((3, 3, 20, 20), (20, 20), (20, 20)),  # same size
    ],
)
def test_output_shape(in_shape, size, out_hw):
    y = LearnableResizer(size)(torch.randn(in_shape))
    assert y.shape == (in_shape[0], 3, *out_hw)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("antialias", [False, True])
def test_zero_init_is_exactly_the_base_resize(interpolation, antialias):
    if interpolation == "nearest" and antialias:
        pytest.skip("antialias applies to bilinear and bicubic only")
    x = torch.randn(2, 3, 31, 23)
    resizer = LearnableResizer((9, 12), interpolation=interpolation, antialias=antialias, zero_init=True)
    if interpolation == "nearest":
        expected = F.interpolate(x, size=(9, 12), mode="nearest-exact")
    else:
        expected = F.interpolate(x, size=(9, 12), mode=interpolation, align_corners=False, antialias=antialias)
    torch.testing.assert_close(resizer(x), expected, rtol=0, atol=0)


def test_default_init_is_not_the_base_resize():
    x = torch.randn(2, 3, 31, 23)
    base = F.interpolate(x, size=(9, 12), mode="bilinear", align_corners=False)
    assert (LearnableResizer((9, 12))(x) - base).abs().max() > 1e-3


def test_antialias_changes_a_downscale():
    x = torch.randn(1, 3, 64, 64)
    plain = LearnableResizer(16, zero_init=True)(x)
    smooth = LearnableResizer(16, zero_init=True, antialias=True)(x)
    assert (plain - smooth).abs().max() > 1e-2
    assert smooth.std() < plain.std()  # low-passed noise has less variance


def test_accepts_torchvision_interpolation_mode():
    from torchvision.transforms import InterpolationMode

    assert LearnableResizer(8, interpolation=InterpolationMode.BICUBIC).interpolation is Interpolation.BICUBIC


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_gradcheck(interpolation):
    torch.manual_seed(0)
    resizer = LearnableResizer((4, 5), num_filters=2, interpolation=interpolation, dtype=torch.float64).eval()
    x = torch.randn(1, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(resizer, (x,), eps=1e-6, atol=1e-5)


def test_gradients_reach_every_parameter_and_the_input():
    resizer = LearnableResizer(6, zero_init=False)
    x = torch.randn(2, 3, 13, 17, requires_grad=True)
    resizer(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in resizer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_zero_init_still_learns():
    resizer = LearnableResizer(6, zero_init=True)
    resizer(torch.randn(2, 3, 13, 17)).square().mean().backward()
    assert resizer.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_follows_module_and_input(dtype):
    resizer = LearnableResizer(7, dtype=dtype)
    assert all(p.dtype == dtype for p in resizer.parameters())
    assert resizer(torch.randn(2, 3, 15, 13, dtype=dtype)).dtype == dtype


def test_autocast_bf16_on_cpu():
    resizer = LearnableResizer(7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = resizer(torch.randn(2, 3, 15, 13))
    assert y.shape == (2, 3, 7, 7) and torch.isfinite(y).all()


def test_channels_last_matches_contiguous():
    resizer = LearnableResizer((9, 11)).eval()
    x = torch.randn(2, 3, 21, 25)
    expected = resizer(x)
    y = resizer.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_input_is_not_modified():
    x = torch.randn(2, 3, 15, 13)
    before = x.clone()
    LearnableResizer(7)(x)
    assert torch.equal(x, before)


def test_train_updates_batchnorm_statistics_eval_does_not():
    resizer = LearnableResizer(7)
    x = torch.randn(4, 3, 15, 13) * 3 + 1
    bn = resizer.stem[-1]
    resizer.eval()
    y1 = resizer(x)
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert torch.equal(resizer(x), y1)  # eval is deterministic
    resizer.train()
    y_train = resizer(x)
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not torch.allclose(y_train, y1)


def test_state_dict_and_pickle_round_trip():
    torch.manual_seed(0)
    a = LearnableResizer((9, 7), num_res_blocks=2, interpolation="bicubic").eval()
    b = LearnableResizer((9, 7), num_res_blocks=2, interpolation="bicubic").eval()
    x = torch.randn(2, 3, 19, 23)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)

    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c = LearnableResizer((9, 7), num_res_blocks=2, interpolation="bicubic").eval()
    c.load_state_dict(torch.load(buf))
    torch.testing.assert_close(c(x), a(x), rtol=0, atol=0)

    d = pickle.loads(pickle.dumps(a))
    assert d.size == (9, 7) and d.interpolation is Interpolation.BICUBIC
    torch.testing.assert_close(d(x), a(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"size": 0}, ValueError),
        ({"size": (3, -1)}, ValueError),
        ({"size": (3, 4, 5)}, TypeError),
        ({"size": 2.5}, TypeError),
        ({"size": 8, "interpolation": "lanczos"}, ValueError),
        ({"size": 8, "num_filters": 0}, ValueError),
        ({"size": 8, "num_res_blocks": -1}, ValueError),
    ],
)
def test_bad_arguments_raise(kwargs, error):
    with pytest.raises(error, match="size|interpolation|num_"):
        LearnableResizer(**kwargs)


def test_rejects_non_batched_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        LearnableResizer(8)(torch.randn(3, 16, 16))


@pytest.mark.slow
def test_torch_compile_matches_eager():
    resizer = LearnableResizer((6, 5), num_filters=4).eval()
    x = torch.randn(2, 3, 14, 12)
    compiled = torch.compile(resizer)
    torch.testing.assert_close(compiled(x), resizer(x), rtol=1e-4, atol=1e-4)


def test_import_and_use_without_dali():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'nvidia' or name.startswith('nvidia.'):\n"
        "            raise ImportError('blocked for the test: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, dali_resizer\n"
        "y = dali_resizer.LearnableResizer(5)(torch.randn(1, 3, 9, 9))\n"
        "assert y.shape == (1, 3, 5, 5)\n"
        "assert not any(m.startswith('nvidia') for m in sys.modules)\n"
        "try:\n"
        "    import pipelines\n"
        "except ImportError as e:\n"
        "    assert 'pip install nvidia-dali' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('pipelines imported without DALI')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.needs_cuda
def test_cuda_forward_backward():
    resizer = LearnableResizer(112).cuda()
    x = torch.randn(2, 3, 224, 224, device="cuda", requires_grad=True)
    y = resizer(x)
    y.mean().backward()
    assert y.device.type == "cuda" and y.shape == (2, 3, 112, 112)
    assert x.grad is not None


def test_repr_names_the_options():
    text = repr(LearnableResizer((9, 7), interpolation="bicubic", memory_efficient=True))
    assert "size=(9, 7), interpolation=bicubic, antialias=False, memory_efficient=True" in text


def test_state_dicts_saved_under_the_former_block_name_load():
    """The block after the residual blocks (conv3x3 - BN, + f) is ``merge``; state dicts that call it
    ``fuse`` load into it, inside a model as well."""
    torch.manual_seed(0)
    saved = nn.Sequential(LearnableResizer(8), nn.Flatten())
    for p in saved.parameters():
        p.data.normal_()
    old = {k.replace(".merge.", ".fuse."): v for k, v in saved.state_dict().items()}
    assert any(".fuse." in k for k in old)
    model = nn.Sequential(LearnableResizer(8), nn.Flatten())
    model.load_state_dict(old)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model.eval()(x), saved.eval()(x), rtol=0, atol=0)
