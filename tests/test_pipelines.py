"""The DALI graphs on their own, run for real on the CPU."""

import numpy as np
import pytest
from PIL import Image

import pipelines
from dali_resizer.spec import TransformSpec
from pipelines import IMAGENET_MEAN, IMAGENET_STD


def run_all(pipe, extra=("status",)):
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    out = list(DALIGenericIterator([pipe], ["images", "second", *extra], reader_name="Reader",
                                   last_batch_policy=LastBatchPolicy.PARTIAL))
    return [b[0]["images"] for b in out], [b[0]["second"] for b in out]


def image_files(root):
    return sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("size", [(13, 21), (21, 13)])
def test_image_folder_pipeline_shapes(image_folder, train, size):
    files = image_files(image_folder)
    pipe = pipelines.image_folder_pipeline(files, list(range(len(files))), spec=TransformSpec(size, train),
                                           batch_size=4, num_threads=2, device_id=None, seed=0)
    images, ids = run_all(pipe)
    assert [tuple(b.shape) for b in images] == [(4, 3, *size), (4, 3, *size), (3, 3, *size)]
    assert sorted(int(i) for b in ids for i in b.flatten()) == list(range(len(files)))


def test_images_over_max_pixels_are_not_decoded(tmp_path):
    Image.new("RGB", (300, 200), (10, 200, 30)).save(tmp_path / "large.png")
    Image.new("RGB", (40, 30), (200, 10, 30)).save(tmp_path / "small.png")
    files = [str(tmp_path / "large.png"), str(tmp_path / "small.png")]
    for train in (True, False):
        pipe = pipelines.image_folder_pipeline(files, [0, 1], spec=TransformSpec((8, 8), train, max_pixels=10_000),
                                               batch_size=2, num_threads=1, device_id=None)
        pipe.build()
        images, ids, status = pipe.run()
        assert np.array(status.as_tensor()).ravel().tolist() == [pipelines.STATUS_OVERSIZE, pipelines.STATUS_OK]
        batch = np.array(images.as_tensor())  # (2, 3, 8, 8)
        assert (np.ptp(batch[0], axis=(1, 2)) == 0).all()  # the large one: a flat placeholder, never decoded
        assert batch[1, 0].mean() > batch[1, 1].mean()  # the small one: its red decoded


def test_bytes_that_are_no_image_get_a_status_not_a_failure(tmp_path):
    import io

    def encoded(fmt):
        buf = io.BytesIO()
        Image.new("RGB", (30, 20), (200, 10, 30)).save(buf, format=fmt)
        return buf.getvalue()

    contents = {
        "jpeg": encoded("JPEG"), "png": encoded("PNG"), "bmp": encoded("BMP"), "tiff": encoded("TIFF"),
        "webp": encoded("WEBP"), "ppm": encoded("PPM"), "gif": encoded("GIF"), "empty": b"",
        "html": b"<!doctype html><html><body>404</body></html>", "one-byte": b"\xff",
        "random": np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes(),
    }
    files = []
    for name, data in contents.items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
        files.append(str(tmp_path / f"{name}.jpg"))
    for replay in (False, True):
        pipe = pipelines.image_folder_pipeline(files, list(range(len(files))), spec=TransformSpec((8, 8), False),
                                               replay=replay, batch_size=len(files), num_threads=1, device_id=None)
        pipe.build()
        images, ids, status = pipe.run()
        got = dict(zip(contents, np.array(status.as_tensor()).ravel().tolist()))
        decodable = ("jpeg", "png", "bmp", "tiff", "webp", "ppm")
        if replay:  # nothing is read or decoded; every sample is listed
            assert set(got.values()) == {pipelines.STATUS_NOT_AN_IMAGE}
        else:
            assert got == {name: pipelines.STATUS_OK if name in decodable else pipelines.STATUS_NOT_AN_IMAGE
                           for name in contents}
        assert np.array(ids.as_tensor()).ravel().tolist() == list(range(len(files)))


def test_float16_output(image_folder):
    import torch

    files = image_files(image_folder)[:4]
    pipe = pipelines.image_folder_pipeline(files, [0, 1, 2, 3], spec=TransformSpec((8, 8), False, dtype="float16"),
                                           batch_size=4, num_threads=1, device_id=None)
    images, _ = run_all(pipe)
    assert images[0].dtype == torch.float16


def test_eval_normalizes_and_center_crops(tmp_path):
    # Left third red, middle green, right third blue, 60 x 90: the center crop of the 0.875 resize
    # must be green in the middle and keep the red/blue sides only at the very edge.
    pixels = np.zeros((60, 90, 3), dtype=np.uint8)
    pixels[:, :30, 0] = 255
    pixels[:, 30:60, 1] = 255
    pixels[:, 60:, 2] = 255
    path = tmp_path / "bands.png"
    Image.fromarray(pixels).save(path)
    pipe = pipelines.image_folder_pipeline([str(path)], [0], spec=TransformSpec((28, 28), False),
                                           batch_size=1, num_threads=1, device_id=None)
    (images,), _ = run_all(pipe)
    image = images[0].numpy()
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    rgb = image * std + mean  # back to [0, 1]
    # Shorter side 60 -> 28 / 0.875 = 32, so 90 -> 48; the crop keeps columns 10..38 of 48:
    # red up to column 16, green 16..32, blue from 32 (in resized pixels).
    np.testing.assert_allclose(rgb[:, 14, 14], [0, 1, 0], atol=0.03)  # center: green
    np.testing.assert_allclose(rgb[:, 14, 1], [1, 0, 0], atol=0.05)  # left edge: red
    np.testing.assert_allclose(rgb[:, 14, 26], [0, 0, 1], atol=0.05)  # right edge: blue
    assert image.shape == (3, 28, 28)


def _eval_case(shape, seed, fmt="JPEG", orientation=None):
    import io

    rng = np.random.default_rng(seed)
    h, w = shape
    # smooth content with edges (a blurred block pattern), so a shifted window shows as a difference
    blocks = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w])
    buf = io.BytesIO()
    options = {"quality": 92} if fmt == "JPEG" else {}
    if orientation is not None:
        exif = image.getexif()
        exif[0x0112] = orientation
        options["exif"] = exif
    image.save(buf, format=fmt, **options)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


@pytest.mark.parametrize(("interp", "device"), [
    ("INTERP_LINEAR", "cpu"), ("INTERP_CUBIC", "cpu"), ("INTERP_LANCZOS3", "cpu"),
    pytest.param("INTERP_LINEAR", "mixed", marks=pytest.mark.needs_cuda),  # nvJPEG's ROI decode
])
def test_eval_decodes_only_the_center_window_and_gives_the_whole_image_pixels(interp, device):
    """The evaluation graph decodes the center crop's window (plus the filter's reach) and resizes its ROI:
    the pixels are those of decoding the whole image, resizing it to cover the crop and cropping."""
    from nvidia.dali import fn, pipeline_def, types

    from pipelines.stages import center_window, decode, normalize

    cases = [((60, 90), "JPEG", None), ((90, 60), "PNG", None), ((37, 211), "JPEG", None),
             ((333, 500), "JPEG", None), ((777, 1000), "PNG", None), ((31, 29), "PNG", None),
             ((120, 160), "JPEG", 6), ((120, 160), "JPEG", 8), ((160, 120), "JPEG", 3)]
    encoded = [_eval_case(shape, i, fmt, o) for i, (shape, fmt, o) in enumerate(cases)]
    size, ratio = (28, 24), 0.875
    names = {"INTERP_LINEAR": "bilinear", "INTERP_CUBIC": "bicubic", "INTERP_LANCZOS3": "lanczos"}
    interp, kind = names[interp], getattr(types, interp)

    @pipeline_def(batch_size=len(cases), num_threads=1, enable_conditionals=True)
    def graph():
        data = fn.external_source(source=lambda: encoded, batch=True)
        outputs = []
        for roi in (True, False):
            spec = TransformSpec(size, False, crop_ratio=ratio, interpolation=interp, roi_decode=roi,
                                 mean=(0, 0, 0), std=(1 / 255,) * 3, layout="HWC")
            images, _ = decode(data, spec, device=device)
            outputs.append(normalize(images, spec))
        return (*outputs, center_window(data, size, ratio, kind)[1])

    pipe = graph(device_id=None if device == "cpu" else 0)
    pipe.build()
    window_crop, whole, window = (np.array(out.as_cpu().as_tensor()) for out in pipe.run())
    assert window_crop.shape == whole.shape == (len(cases), *size, 3)
    for (shape, fmt, orientation), a, b, (wh, ww) in zip(cases, window_crop, whole, window):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, (shape, fmt, orientation)
        assert a.std() > 10  # (content, not a placeholder)
        h, w = shape[::-1] if orientation in (6, 8) else shape  # (as displayed)
        if min(h, w) > 8 * max(size):  # a large downscale: the window leaves out much of the long side
            assert wh <= h and ww <= w and wh * ww < 0.85 * h * w, (shape, (wh, ww))


def test_train_flips_and_crops_differ_between_samples(tmp_path):
    pixels = np.zeros((40, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # left half white
    path = tmp_path / "half.png"
    Image.fromarray(pixels).save(path)
    files = [str(path)] * 16
    pipe = pipelines.image_folder_pipeline(files, list(range(16)), spec=TransformSpec((16, 16), True),
                                           batch_size=16, num_threads=1, device_id=None, seed=3)
    (images,), _ = run_all(pipe)
    left = images[:, 0, :, :8].mean(dim=(1, 2))
    right = images[:, 0, :, 8:].mean(dim=(1, 2))
    assert (left > right).any() and (right > left).any()  # some flipped, some not


def test_webdataset_pipeline_reads_every_sample(shard_dir):
    from dali_resizer.readers import ShardSource

    tars = sorted(str(p) for p in shard_dir.glob("*.tar"))
    source = ShardSource.from_paths(tars, index_dir=shard_dir / "idx")
    pipe = pipelines.webdataset_pipeline(source.paths, source.index_paths, spec=TransformSpec((12, 20), True),
                                         random_shuffle=True, initial_fill=4,
                                         batch_size=4, num_threads=2, device_id=None, seed=0)
    images, labels = run_all(pipe, extra=("status", "image_name", "label_name"))
    assert [tuple(b.shape) for b in images] == [(4, 3, 12, 20)] * 3 + [(1, 3, 12, 20)]
    texts = [bytes(row[row > 0].tolist()) for b in labels for row in b]
    assert sorted(texts) == sorted(str(i % 3).encode() for i in range(13))


def test_webdataset_pipeline_names_its_samples_and_reports_missing_parts(tmp_path):
    import webdataset as wds

    from dali_resizer.readers.wds_index import build_index

    image = (tmp_path / "x.jpg")
    Image.new("RGB", (20, 10), (0, 90, 200)).save(image)
    with wds.TarWriter(str(tmp_path / "s.tar")) as sink:
        sink.write({"__key__": "a", "jpg": image.read_bytes(), "cls": b"1"})
        sink.write({"__key__": "b", "cls": b"2"})  # no image
        sink.write({"__key__": "c", "jpg": image.read_bytes()})  # no label
    build_index(tmp_path / "s.tar", tmp_path / "s.idx")
    pipe = pipelines.webdataset_pipeline([str(tmp_path / "s.tar")], [str(tmp_path / "s.idx")],
                                         spec=TransformSpec((8, 8), False), batch_size=3, num_threads=1, device_id=None)
    pipe.build()
    _, labels, status, image_names, label_names = (np.array(t.as_tensor()) for t in pipe.run())

    def text(row):
        return bytes(row[row > 0].tolist()).decode()

    assert [text(r) for r in labels] == ["1", "2", ""]
    assert status.ravel().tolist() == [pipelines.STATUS_OK, pipelines.STATUS_NOT_AN_IMAGE, pipelines.STATUS_OK]
    tar = str(tmp_path / "s.tar")
    assert [text(r).split(":")[::2] for r in image_names] == [[tar, "a.jpg"], [""], [tar, "c.jpg"]]
    assert [text(r).rsplit(":", 1)[-1] for r in label_names] == ["a.cls", "b.cls", ""]


@pytest.mark.needs_cuda
def test_mixed_decoder_outputs_on_gpu(image_folder):
    files = image_files(image_folder)
    pipe = pipelines.image_folder_pipeline(files, list(range(len(files))), spec=TransformSpec((32, 32), True),
                                           decoder=pipelines.decoder_device(0),
                                           batch_size=4, num_threads=2, device_id=0)
    images, ids = run_all(pipe)
    assert images[0].is_cuda and images[0].shape == (4, 3, 32, 32)
    assert not ids[0].is_cuda


@pytest.mark.needs_cuda
def test_mixed_decoder_placeholders_for_bad_and_oversize_images(tmp_path):
    Image.new("RGB", (300, 200), (10, 200, 30)).save(tmp_path / "large.png")
    Image.new("RGB", (40, 30), (200, 10, 30)).save(tmp_path / "small.jpg")
    (tmp_path / "page.jpg").write_bytes(b"<html>not an image</html>")
    files = [str(tmp_path / name) for name in ("large.png", "small.jpg", "page.jpg")]
    for train in (True, False):
        pipe = pipelines.image_folder_pipeline(files, [0, 1, 2], spec=TransformSpec((8, 8), train, max_pixels=10_000),
                                               decoder=pipelines.decoder_device(0),
                                               batch_size=3, num_threads=1, device_id=0)
        (images,), _ = run_all(pipe)
        pipe = pipelines.image_folder_pipeline(files, [0, 1, 2], spec=TransformSpec((8, 8), train, max_pixels=10_000),
                                               decoder=pipelines.decoder_device(0),
                                               batch_size=3, num_threads=1, device_id=0)
        pipe.build()
        status = np.array(pipe.run()[2].as_tensor()).ravel().tolist()
        assert status == [pipelines.STATUS_OVERSIZE, pipelines.STATUS_OK, pipelines.STATUS_NOT_AN_IMAGE]
        assert images.is_cuda and images.shape == (3, 3, 8, 8)
        assert images[1, 0].mean() > images[1, 1].mean()  # the small one decoded on the GPU: red


def test_the_pipeline_signature_table_is_the_python_one():
    """The pipeline's one comparison of the first 12 bytes against the table finds the format
    ``samples.image_format`` finds, row for row, for every signature and for bytes of none."""
    from nvidia.dali import fn, pipeline_def, types

    from dali_resizer.samples import IMAGE_SIGNATURES, image_format
    from pipelines.stages import _signature_rows

    heads = []
    for _, parts in IMAGE_SIGNATURES:
        head = bytearray(b"\x07" * 16)
        for offset, magic in parts:
            head[offset : offset + len(magic)] = magic
        heads.append(bytes(head))
    heads += [b"GIF89a" + b"\x00" * 10, b"<html>", b"", b"\xff", b"\xff\xd8", b"RIFF\x00\x00\x00\x00WEBQ", b"P7 x"]

    @pipeline_def
    def rows_of():
        encoded = fn.external_source(source=lambda: [np.frombuffer(h, np.uint8) for h in heads], batch=True,
                                     dtype=types.UINT8)
        return _signature_rows(encoded)

    pipe = rows_of(batch_size=len(heads), num_threads=1, device_id=None)
    pipe.build()
    (rows,) = pipe.run()
    for head, row in zip(heads, (np.array(r).tolist() for r in rows)):
        matched = [IMAGE_SIGNATURES[i][0] for i, hit in enumerate(row) if hit]
        assert matched == ([image_format(head)] if image_format(head) else []), head
    assert sum(1 for h in heads if image_format(h)) == len(IMAGE_SIGNATURES)  # each row found by its own bytes
