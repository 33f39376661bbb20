"""See what a trained resizer does: a PNG grid of input, fixed resize, learned resize and their difference.

    python -m dali_resizer.visualize --checkpoint runs/train/checkpoint.pt --data imagenet/val --output grid.png

One row per image: the loader's working-size input, the bilinear resize to the output size, the learned
resizer's output, and ``|learned - bilinear|`` stretched to the full range; outputs are shown enlarged
to the input's height so their pixels can be seen. Learned outputs are not meant
to look natural (the paper shows the same): they are tuned to what the backbone needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from dali_resizer.loader import DALILoader
from dali_resizer.muller import MullerResizer
from dali_resizer.resizer import LearnableResizer, resize
from dali_resizer.samples import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["load_resizer", "main", "render_grid"]

COLUMNS = ("input", "bilinear", "learned", "|learned - bilinear|")


def load_resizer(checkpoint: str) -> tuple[LearnableResizer | MullerResizer, dict]:
    """The learned resizer of a ``dali_resizer.train`` checkpoint (eval mode) and the run's arguments."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    args = ckpt.get("args", {})
    state = {k[len("resizer."):]: v for k, v in ckpt["model"].items() if k.startswith("resizer.")}
    if not state:
        raise ValueError(f"{checkpoint}: holds no learned resizer (was it trained with --resizer learned?)")
    if args.get("resizer") == "muller":
        layers = len(state["weight"])
        resizer: LearnableResizer | MullerResizer = MullerResizer(args.get("size", 224), num_layers=layers)
    else:
        resizer = LearnableResizer(args.get("size", 224), num_filters=args.get("num_filters", 16),
                                   num_res_blocks=args.get("num_res_blocks", 1))
    resizer.load_state_dict(state)
    return resizer.eval(), args


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """Normalized ``(3, H, W)`` (the loader's default ImageNet mean and std) back to an ``(H, W, 3)`` uint8 image."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return ((x.float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def render_grid(images: torch.Tensor, resizer: torch.nn.Module) -> np.ndarray:
    """``(N, 3, H, W)`` normalized inputs to one uint8 grid, a row per image. Outputs smaller than the
    input are shown enlarged by an integer factor (nearest neighbour), so their pixels stay visible."""
    with torch.inference_mode():
        learned = resizer(images)
        fixed = resize(images, resizer.size)
    diff = (learned - fixed).abs().sum(dim=1, keepdim=True)  # (N, 1, h, w)
    diff = (diff / diff.amax(dim=(2, 3), keepdim=True).clamp_min(1e-8)).expand(-1, 3, -1, -1)
    h, w = images.shape[-2:]
    out_h, out_w = resizer.size
    zoom = max(1, min(h // out_h, w // out_w))
    pad = 4
    grid = np.full((images.shape[0] * (h + pad) + pad, w + 3 * out_w * zoom + pad * 5, 3), 255, dtype=np.uint8)
    for row in range(images.shape[0]):
        outputs = [_to_uint8(fixed[row]), _to_uint8(learned[row]),
                   (diff[row].permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)]
        cells = [_to_uint8(images[row])] + [cell.repeat(zoom, axis=0).repeat(zoom, axis=1) for cell in outputs]
        y, x = pad + row * (h + pad), pad
        for cell in cells:
            grid[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
            x += cell.shape[1] + pad
    return grid


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m dali_resizer.visualize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt of a --resizer learned training run")
    p.add_argument("--data", required=True, help="image folder or shards to take the images from")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--input-size", type=int, help="default: the run's --input-size")
    p.add_argument("--output", default="resizer-grid.png")
    args = p.parse_args(argv)
    if args.num_images < 1:
        p.error(f"--num-images must be at least 1, got {args.num_images}")

    from PIL import Image, ImageDraw

    resizer, run_args = load_resizer(args.checkpoint)
    input_size = args.input_size or run_args.get("input_size", 448)
    loader = DALILoader(args.data, batch_size=args.num_images, size=input_size, train=False, device="cpu")
    images, _ = next(iter(loader))
    grid = Image.fromarray(render_grid(images, resizer))
    header = Image.new("RGB", (grid.width, 16), "white")
    draw = ImageDraw.Draw(header)
    x = 4
    zoom = max(1, min(input_size // resizer.size[0], input_size // resizer.size[1]))
    for name, width in zip(COLUMNS, (input_size, *[resizer.size[1] * zoom] * 3)):
        draw.text((x, 2), name, fill="black")
        x += width + 4
    page = Image.new("RGB", (grid.width, grid.height + header.height), "white")
    page.paste(header, (0, 0))
    page.paste(grid, (0, header.height))
    path = Path(args.output).resolve()
    page.save(path)
    print(f"wrote {path}: {images.shape[0]} rows; columns: {', '.join(COLUMNS)}")
    return str(path)


if __name__ == "__main__":
    main()
