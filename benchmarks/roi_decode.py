"""What decoding only the crop's window saves, against decoding whole images and cropping after.

    python benchmarks/roi_decode.py                                      # the embedded synthetic set
    python benchmarks/roi_decode.py --data ../shared/data/imagenet-sample
    python benchmarks/roi_decode.py --high-res                           # synthetic 2,000-4,000 px photos
    python benchmarks/roi_decode.py --device gpu                         # nvJPEG ("mixed"), on a GPU host

The loader's graphs (``pipelines.decode``, then ``normalize``) in the two forms of ``roi_decode``,
same files, threads and batch:

    eval-whole     decode the whole image, resize it to cover size / crop_ratio, center crop
    eval-window    decode only the crop's window plus the filter's reach (``fn.decoders.image_slice``),
                   resize its region of interest to size: the same pixels (tests/test_pipelines.py)
    train-whole    decode the whole image, ``fn.random_resized_crop`` (on a GPU the hardware JPEG
                   decoder takes its share: it does not decode windows)
    train-window   ``fn.decoders.image_random_crop``, then the resize (the loader's default)

Printed: images/s (median of --repeats), the ratio window / whole, what computing the evaluation
window from the header costs the CPU per batch, and the decoded pixels per image of each form (the
window's from ``pipelines.stages.center_window``, the random crop's from the decoder's output, over
every file): the decoder's output memory per batch scales with it. On a GPU run each form on its own
(``--forms``) to tell a failing decoder from the others.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # (pipeline_stages' timing)


FORMS = ("eval-whole", "eval-window", "train-whole", "train-window")


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
    p.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args(argv)

    import numpy as np
    from nvidia.dali import fn, pipeline_def, types
    from pipeline_stages import seconds_per_batch

    from dali_resizer import make_synthetic_folder
    from dali_resizer.readers import ImageFolderSource
    from dali_resizer.spec import TransformSpec
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

    def build(body, device=device_id):
        @pipeline_def(enable_conditionals=True)
        def graph():
            encoded, _ = fn.readers.file(files=files, random_shuffle=False, name="Reader")
            return body(encoded)

        pipe = graph(batch_size=a.batch_size, num_threads=a.threads, device_id=device, seed=0,
                     prefetch_queue_depth=2)
        pipe.build()
        return pipe

    # the decoded pixels of each form, over every file (on the CPU, whatever --device: the same shapes)
    def decoded(encoded):
        window = center_window(encoded, size, a.crop_ratio)[1]
        crop = fn.decoders.image_random_crop(encoded, device="cpu", output_type=types.RGB, num_attempts=10)
        return fn.peek_image_shape(encoded), window, crop.shape()

    pixels = dict.fromkeys(FORMS, 0)
    pipe = build(decoded, device=None)
    for start in range(0, len(files), a.batch_size):
        shape, window, crop = (np.array(out.as_tensor()) for out in pipe.run())
        n = min(a.batch_size, len(files) - start)
        whole = int((shape[:n, 0] * shape[:n, 1]).sum())
        pixels |= {"eval-whole": pixels["eval-whole"] + whole, "train-whole": pixels["train-whole"] + whole,
                   "eval-window": pixels["eval-window"] + int((window[:n, 0] * window[:n, 1]).sum()),
                   "train-window": pixels["train-window"] + int((crop[:n, 0] * crop[:n, 1]).sum())}
    del pipe

    # what computing the window from the header costs the CPU, per batch: reader + center_window - reader
    window_ms = {}
    graphs = {"reader": lambda e: e, "reader + center_window": lambda e: center_window(e, size, a.crop_ratio)}
    for name, body in graphs.items():
        pipe = build(body, device=None)
        window_ms[name] = 1e3 * seconds_per_batch(pipe, a.batches, a.repeats)
        del pipe

    rows = {}
    for name in a.forms:
        train, roi = name.startswith("train"), name.endswith("window")

        def body(encoded, train=train, roi=roi):
            spec = TransformSpec(tuple(size), train, crop_ratio=a.crop_ratio, roi_decode=roi)
            images, _ = decode(encoded, spec, device=decoder)
            return normalize(images, spec)

        pipe = build(body)
        rows[name] = {"images_per_s": a.batch_size / seconds_per_batch(pipe, a.batches, a.repeats),
                      "decoded_mpx_per_image": pixels[name] / len(files) / 1e6}
        del pipe
    print(f"{len(files)} files from {root}, {a.device}, {a.threads} threads, batch {a.batch_size}, size {a.size}")
    for name, row in rows.items():
        print(f"  {name:<13} {row['images_per_s']:8.1f} img/s   {row['decoded_mpx_per_image']:7.3f} Mpx decoded/image")
    print(f"  center_window  {window_ms['reader + center_window'] - window_ms['reader']:8.2f} ms a batch on the CPU "
          f"(reader alone {window_ms['reader']:.2f} ms, with it {window_ms['reader + center_window']:.2f} ms)")
    ratios = {}
    for kind in ("eval", "train"):
        window, whole = rows.get(f"{kind}-window"), rows.get(f"{kind}-whole")
        if window and whole:
            ratios[kind] = {"speedup": window["images_per_s"] / whole["images_per_s"],
                            "pixel_ratio": window["decoded_mpx_per_image"] / whole["decoded_mpx_per_image"]}
            print(f"  {kind}: window / whole {ratios[kind]['speedup']:.2f}x images/s, "
                  f"{ratios[kind]['pixel_ratio']:.2f}x decoded pixels")
    report = {"files": len(files), "data": str(root), "device": a.device, "threads": a.threads,
              "batch_size": a.batch_size, "size": a.size, "crop_ratio": a.crop_ratio, "rows": rows,
              "ratios": ratios, "window_ms_per_batch": window_ms}
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
