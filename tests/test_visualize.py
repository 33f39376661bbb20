import numpy as np
import torch
from PIL import Image

from dali_resizer import LearnableResizer
from dali_resizer.visualize import main, render_grid


def test_zero_init_resizer_shows_no_difference():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 24, 20)
    grid = render_grid(images, LearnableResizer((10, 8), zero_init=True).eval())
    pad, zoom = 4, 2  # outputs of 10 x 8 shown at 20 x 16 beside the 24 x 20 inputs
    assert grid.shape == (2 * (24 + pad) + pad, 20 + 3 * 8 * zoom + 5 * pad, 3)
    for row in range(2):
        y = pad + row * (24 + pad)
        fixed = grid[y : y + 20, pad + 20 + pad :][:, :16]
        learned = grid[y : y + 20, pad + 20 + pad + 16 + pad :][:, :16]
        diff = grid[y : y + 20, pad + 20 + pad + 2 * (16 + pad) :][:, :16]
        assert np.array_equal(fixed, learned)
        assert diff.max() == 0
        assert fixed.std() > 0


def test_cli_writes_png_from_a_training_checkpoint(tmp_path, image_folder):
    model = torch.nn.Sequential()
    model.add_module("resizer", LearnableResizer(12))
    torch.save({"model": model.state_dict(), "args": {"size": 12, "input_size": 24}}, tmp_path / "ckpt.pt")
    out = main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--data", str(image_folder), "--num-images", "3",
                "--output", str(tmp_path / "grid.png")])
    image = Image.open(out)
    assert image.size == (24 + 3 * 24 + 5 * 4, 16 + 3 * (24 + 4) + 4)  # 12 px outputs shown 2x


def test_cli_reads_a_muller_checkpoint(tmp_path, image_folder):
    from dali_resizer import MullerResizer
    from dali_resizer.visualize import load_resizer

    model = torch.nn.Sequential()
    model.add_module("resizer", MullerResizer(12))
    with torch.no_grad():
        model.resizer.weight.fill_(0.7)
    torch.save({"model": model.state_dict(), "args": {"size": 12, "input_size": 24, "resizer": "muller"}},
               tmp_path / "ckpt.pt")
    resizer, _ = load_resizer(str(tmp_path / "ckpt.pt"))
    assert isinstance(resizer, MullerResizer) and torch.equal(resizer.weight, model.resizer.weight)
    out = main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--data", str(image_folder), "--num-images", "2",
                "--output", str(tmp_path / "grid.png")])
    assert Image.open(out).size[0] == 24 + 3 * 24 + 5 * 4


def test_cli_says_where_it_wrote_and_refuses_zero_images(tmp_path, image_folder, capsys, monkeypatch):
    import pytest

    model = torch.nn.Sequential()
    model.add_module("resizer", LearnableResizer(12))
    torch.save({"model": model.state_dict(), "args": {"size": 12, "input_size": 24}}, tmp_path / "ckpt.pt")
    monkeypatch.chdir(tmp_path)
    out = main(["--checkpoint", "ckpt.pt", "--data", str(image_folder), "--num-images", "2"])
    assert out == str(tmp_path / "resizer-grid.png") and Image.open(out).size[0] > 0
    assert f"wrote {tmp_path / 'resizer-grid.png'}" in capsys.readouterr().out  # the full path, on stdout
    with pytest.raises(SystemExit):
        main(["--checkpoint", "ckpt.pt", "--data", str(image_folder), "--num-images", "0"])
    assert "--num-images must be at least 1, got 0" in capsys.readouterr().err
