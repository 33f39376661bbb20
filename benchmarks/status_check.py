"""What the per-sample status check costs the pipeline's CPU side, per batch.

    python benchmarks/status_check.py                          # the embedded synthetic set
    python benchmarks/status_check.py --data ../shared/data/imagenet-sample --batch-size 256

The loader checks every sample before decoding it (``pipelines.image_status``: the format from its
first bytes, the pixel count from its header, a JPEG too short for its size) so that a bad file is
named instead of stopping DALI. Three graphs over the same files, no decode, batch --batch-size:

    reader            fn.readers.file alone (the baseline)
    + status          the reader and ``image_status``, as the loader runs it
    + peek            the reader and ``fn.peek_image_shape`` alone (the header read the check needs)

Printed: ms per batch (median of --repeats), the check's own cost (``+ status`` less ``reader``),
and the operators each graph holds (DALI runs each once per batch; on a GPU host they share the CPU
with the file reader and nvJPEG's Huffman stage).
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
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=20, help="timed batches per repetition")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args(argv)

    from nvidia.dali import fn, pipeline_def
    from pipeline_stages import seconds_per_batch

    import pipelines
    from dali_resizer import make_synthetic_folder
    from dali_resizer.readers import ImageFolderSource

    files = ImageFolderSource.scan(a.data or make_synthetic_folder()).files
    graphs = {
        "reader": lambda e: e,
        "+ status": lambda e: pipelines.image_status(e),
        "+ peek": lambda e: fn.peek_image_shape(e),
    }
    rows = {}
    for name, body in graphs.items():
        @pipeline_def(enable_conditionals=True)
        def graph(body=body):
            encoded, _ = fn.readers.file(files=files, random_shuffle=False, name="Reader")
            return body(encoded)

        pipe = graph(batch_size=a.batch_size, num_threads=a.threads, device_id=None, seed=0,
                     prefetch_queue_depth=1)
        pipe.build()
        operators = len(pipe._ops)  # (the graph's operators, as DALI instantiates them)
        rows[name] = {"ms_per_batch": 1e3 * seconds_per_batch(pipe, a.batches, a.repeats), "operators": operators}
        del pipe
    check = rows["+ status"]["ms_per_batch"] - rows["reader"]["ms_per_batch"]
    print(f"{len(files)} files, {a.threads} threads, batch {a.batch_size}")
    for name, row in rows.items():
        print(f"  {name:<10} {row['ms_per_batch']:8.2f} ms/batch  {row['operators']:4d} operators")
    print(f"  the status check: {check:.2f} ms per batch ({1e3 * check / a.batch_size:.1f} us per sample)")
    report = {"files": len(files), "threads": a.threads, "batch_size": a.batch_size, "rows": rows,
              "status_ms_per_batch": check}
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
