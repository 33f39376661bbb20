"""What decoding only the center crop's window saves the evaluation pipeline.

    python benchmarks/eval_window.py                                      # the embedded synthetic set
    python benchmarks/eval_window.py --data ../shared/data/imagenet-sample
    python benchmarks/eval_window.py --high-res                           # synthetic 2,000-4,000 px photos
    python benchmarks/eval_window.py --device gpu                         # nvJPEG ("mixed"), on a GPU host

The loader's evaluation graph (``pipelines.decode(train=False)``, then ``normalize``) in its two forms,
same files, threads and batch:

    whole     decode the whole image, resize it to cover size / crop_ratio, center crop
    window    decode only the crop's window plus the filter's reach (``fn.decoders.image_slice``), resize
              its region of interest to size: the same pixels (tests/test_pipelines.py)

Printed: images/s (median of --repeats), the ratio window / whole, and the decoded pixels per image
of each (the window's from ``pipelines.stages.center_window`` over every file): the decoder's output
memory per batch scales with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # (pipeline_stages' timing)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="image folder (default: the embedded synthetic set)")
    p.add_argument("--high-res", action="store_true", help="a synthetic set of 2,000-4,000 px photos")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--crop-ratio", type=float, default=0.875)
    p.add_argument("--batches", type=int, default=10, help="timed batches per repetition")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args(argv)

    import numpy as np
    from nvidia.dali import fn, pipeline_def, types
    from pipeline_stages import seconds_per_batch

    from dali_resizer import make_synthetic_folder
    from dali_resizer.readers import ImageFolderSource
    from pipelines.stages import center_window, decode, normalize

    if a.data:
        root = a.data
    elif a.high_res:
        root = make_synthetic_folder(num_classes=4, images_per_class=8, min_side=2000, max_side=4000)
    else:
        root = make_synthetic_folder()
    files = ImageFolderSource.scan(root).files
    size = (a.size, a.size)
    decoder, device_id = ("mixed", 0) if a.device == "gpu" else ("cpu", None)

    def build(body, batch_size=a.batch_size):
        @pipeline_def(enable_conditionals=True)
        def graph():
            encoded, _ = fn.readers.file(files=files, random_shuffle=False, name="Reader")
            return body(encoded)

        pipe = graph(batch_size=batch_size, num_threads=a.threads, device_id=device_id, seed=0,
                     prefetch_queue_depth=2)
        pipe.build()
        return pipe

    # the decoded pixels: the header's (H, W) and the window's, for every file
    pipe = build(lambda e: (fn.peek_image_shape(e), center_window(e, size, a.crop_ratio)[1]), batch_size=1)
    whole_px = window_px = 0
    for _ in files:
        shape, window = (np.array(out.as_tensor()).ravel() for out in pipe.run())
        whole_px += int(shape[0] * shape[1])
        window_px += int(window[0] * window[1])
    del pipe

    rows = {}
    for name, roi in (("whole", False), ("window", True)):
        def body(encoded, roi=roi):
            images, _ = decode(encoded, size=size, train=False, device=decoder, crop_ratio=a.crop_ratio, roi=roi)
            return normalize(images, size=size, train=False, dtype=types.FLOAT)

        pipe = build(body)
        rows[name] = {"images_per_s": a.batch_size / seconds_per_batch(pipe, a.batches, a.repeats),
                      "decoded_mpx_per_image": (window_px if roi else whole_px) / len(files) / 1e6}
        del pipe
    ratio = rows["window"]["images_per_s"] / rows["whole"]["images_per_s"]
    print(f"{len(files)} files from {root}, {a.device}, {a.threads} threads, batch {a.batch_size}, size {a.size}")
    for name, row in rows.items():
        print(f"  {name:<7} {row['images_per_s']:8.1f} img/s   {row['decoded_mpx_per_image']:7.3f} Mpx decoded/image")
    pixels = rows["window"]["decoded_mpx_per_image"] / rows["whole"]["decoded_mpx_per_image"]
    print(f"  window / whole: {ratio:.2f}x images/s, {pixels:.2f}x decoded pixels")
    report = {"files": len(files), "data": str(root), "device": a.device, "threads": a.threads,
              "batch_size": a.batch_size, "size": a.size, "crop_ratio": a.crop_ratio, "rows": rows,
              "speedup": ratio, "pixel_ratio": pixels}
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
