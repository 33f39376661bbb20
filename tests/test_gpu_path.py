"""The GPU path's logic, checked on the CPU: device selection, thread defaults, the mixed graph's
operators (built, not run: DALI builds a GPU graph's definition without CUDA), what a GPU failure is
called, pipelines let go before others are built, the exact 2x downscale, the chunk budget."""

import gc
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dali_resizer import DALILoader, LearnableResizer
from dali_resizer.loader import default_threads, local_gpu, resolve_device
from dali_resizer.samples import DaliFailure, classify_failure

# -- 1. device selection ------------------------------------------------------------------------------


def test_each_local_rank_takes_its_gpu_and_ranks_share_when_fewer_are_visible():
    assert [local_gpu(r, 4, 4, 0) for r in range(4)] == [0, 1, 2, 3]
    assert [local_gpu(r, 3, 1, 0) for r in range(3)] == [0, 0, 0]  # one GPU per task, or one GPU for all
    with pytest.warns(UserWarning, match="LOCAL_RANK 3 of 4 on a host with 2 visible GPUs: ranks share GPUs"):
        assert local_gpu(3, 4, 2, 0) == 1
    assert local_gpu(None, None, 8, 5) == 5  # outside torchrun: the current device
    with pytest.raises(ValueError, match="no CUDA device"):
        local_gpu(0, 1, 0, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU host's answers")
def test_without_cuda_the_default_is_the_cpu_and_a_gpu_request_is_an_error(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device(None) == torch.device("cpu")
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="CUDA is not available here"):
            resolve_device(device)


@pytest.mark.needs_cuda
def test_local_rank_past_the_visible_gpus_is_not_an_invalid_device(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count()))  # one more rank than GPUs
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(torch.cuda.device_count() + 1))
    with pytest.warns(UserWarning) if torch.cuda.device_count() > 1 else _no_warning():
        assert resolve_device(None) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="there are only"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- 2. threads and the decoder's memory --------------------------------------------------------------


def test_threads_are_shared_among_the_ranks_of_a_host(monkeypatch, image_folder):
    import os

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads(torch.device("cpu")) == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # more ranks than cores: one thread each
    assert default_threads(torch.device("cpu")) == 1
    assert DALILoader(image_folder, batch_size=2, size=8, device="cpu").num_threads == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_threads(torch.device("cuda")) == min(cores, 16)


def _mixed_graph(loader, files, ids):
    """The loader's pipeline as it would be on GPU 0, its graph built (not run)."""
    import pipelines

    settings = loader._reader.plan.pipeline_settings(loader.sampler.due())
    settings |= {"device_id": 0, "decoder": "mixed"}
    pipe = pipelines.image_folder_pipeline(files, ids, **settings)
    pipe._build_graph()
    return pipe


def _ops(pipe) -> list[tuple[str, str, str]]:
    """(schema, device, arguments) of each operator of a built graph."""
    rows = []
    for op in pipe._ops:
        text = str(op.spec)
        schema = text.split("\n", 1)[0].removeprefix("OpSpec for ").rstrip(":")
        device = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                       if line.strip().startswith("device:")), "")
        rows.append((schema, device, text))
    return rows


@pytest.mark.parametrize(("train", "roi_decode", "decoder"), [
    (True, True, "decoders__ImageRandomCrop"), (False, True, "decoders__ImageSlice"),
    (True, False, "decoders__Image"), (False, False, "decoders__Image")])
def test_the_mixed_graph_decodes_as_the_cpu_does_with_the_loaders_settings(image_folder, train, roi_decode, decoder):
    loader = DALILoader(image_folder, batch_size=4, size=16, device="cpu", train=train, hw_decoder_load=0.9,
                        device_memory_padding=0, host_memory_padding=1 << 20, set_affinity=True, roi_decode=roi_decode)
    files, ids = loader._reader.epoch_samples(loader.sampler.due())
    ops = _ops(_mixed_graph(loader, files, ids.tolist()))
    decoders = [(schema, device, text) for schema, device, text in ops if schema.startswith("decoders__")]
    assert [(schema, device) for schema, device, _ in decoders] == [(decoder, "mixed")]
    if train and not roi_decode:  # the random crop after the whole image, on the GPU
        assert [device for schema, device, _ in ops if schema == "RandomResizedCrop"] == ["gpu"]
    text = decoders[0][2]
    for argument in ("jpeg_fancy_upsampling: True", "hw_decoder_load: 0.9", "device_memory_padding: 0",
                     f"host_memory_padding: {1 << 20}"):
        assert argument in text, argument
    after = [(schema, device) for schema, device, _ in ops if schema in ("Resize", "CropMirrorNormalize")]
    assert after and all(device == "gpu" for _, device in after)  # nothing decoded goes back to the host
    assert loader._reader.plan.pipeline["set_affinity"] is False  # (a CPU loader pins no threads)


def test_the_status_check_is_a_handful_of_operators(image_folder):
    """The per-sample check before decoding (format from the first bytes, pixels from the header, a
    JPEG too short) is one table comparison: under 32 operators for the whole check, where a
    comparison per byte and format took over 100."""
    from nvidia.dali import fn, pipeline_def

    import pipelines

    files = DALILoader(image_folder, batch_size=2, size=8, device="cpu").dataset.files

    @pipeline_def(enable_conditionals=True)
    def check():
        encoded, _ = fn.readers.file(files=files, name="Reader")
        return pipelines.image_status(encoded)

    pipe = check(batch_size=4, num_threads=1, device_id=None)
    pipe.build()
    assert len(pipe._ops) - 1 < 32  # (less the reader)
    assert np.array(pipe.run()[0].as_tensor()).ravel().tolist() == [pipelines.STATUS_OK] * 4


# -- 5. what a GPU failure is called ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "device"), [
    ("CUDA runtime API error cudaErrorMemoryAllocation (2):\nout of memory", True),
    ("Can't allocate 1073741824 bytes on device 0.", True),
    ("nvJPEG error: NVJPEG_STATUS_ALLOCATOR_FAILURE", True),
    ("Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.decoders.image`,\nFailed to decode sample "
     "#2 : /data/cat/a.jpg : Unsupported image type", False),
    ("Critical error in pipeline:\nJPEG data too short", False),
])
def test_a_gpu_failure_is_told_apart_from_a_bad_sample(text, device):
    assert (classify_failure(RuntimeError(text)).kind == "device") is device


def test_an_out_of_memory_error_in_the_pipeline_is_raised_not_skipped(image_folder, monkeypatch):
    """A pipeline that fails with the GPU's out-of-memory words (a DALI python_function raising them,
    as no GPU is here to run out) stops the epoch with torch's OutOfMemoryError; nothing is counted as
    a bad sample, and the position is kept."""
    from nvidia.dali import fn, pipeline_def, types

    loader = DALILoader(image_folder, batch_size=2, size=8, device="cpu", on_error="skip", seed=1)
    calls = {"n": 0}

    def fail_on_the_second_batch(ids):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("CUDA runtime API error cudaErrorMemoryAllocation (2): out of memory")
        return ids

    @pipeline_def(enable_checkpointing=True)
    def running_out(files, ids):
        encoded, labels = fn.readers.file(files=files, labels=ids, name="Reader", pad_last_batch=True)
        images = fn.resize(fn.decoders.image(encoded, device="cpu"), size=[8, 8])
        labels = fn.python_function(labels, function=fail_on_the_second_batch, batch_processing=False)
        status = fn.cast(labels * 0, dtype=types.UINT8)
        return fn.transpose(fn.cast(images, dtype=types.FLOAT), perm=[2, 0, 1]), labels, status

    def pipeline(epoch, checkpoint=None, base=0, replay=False):
        files, ids = loader._reader.epoch_samples(epoch)
        pipe = running_out(files, ids.tolist(), batch_size=2, num_threads=1, device_id=None, prefetch_queue_depth=1,
                           exec_async=False, exec_pipelined=False)
        pipe.build()
        return pipe

    monkeypatch.setattr(loader._reader, "pipeline", pipeline)
    delivered = 0
    with pytest.raises(torch.OutOfMemoryError, match=r"not a bad sample; DALI: .*CUDA runtime API error "
                                                     r"cudaErrorMemoryAllocation \(2\): out of memory"):
        for _ in loader:
            delivered += 1
    assert loader.skipped == {} and loader.state_dict()["batches_done"] == delivered


# -- 6. one pipeline at a time ------------------------------------------------------------------------


def _pipelines_alive_at_each_build(monkeypatch) -> list[int]:
    """For each DALI pipeline built from now on, how many other pipelines are alive then."""
    from nvidia.dali import Pipeline

    alive, made = [], weakref.WeakSet()
    build = Pipeline.build

    def counting(self):
        if self not in made:  # (DALI calls build() again on a built pipeline)
            gc.collect()
            alive.append(sum(1 for p in made if p is not self))
            made.add(self)
        return build(self)

    monkeypatch.setattr(Pipeline, "build", counting)
    return alive


def test_an_abandoned_epochs_pipeline_is_let_go_before_the_next_is_built(image_folder, monkeypatch):
    loader = DALILoader(image_folder, batch_size=2, size=8, device="cpu", shuffle=True)
    alive = _pipelines_alive_at_each_build(monkeypatch)
    it = iter(loader)
    next(it)
    del it  # the loop left mid-epoch (the loader keeps its position for state_dict)
    next(iter(loader))
    assert alive == [0, 0]
    held = iter(loader)
    next(held)
    next(iter(loader))  # a second iterator while the first is held: both are alive, each with its pipeline
    assert alive == [0, 0, 0, 1]


def test_a_failed_pipeline_is_let_go_before_its_replacement_is_built(tmp_path, monkeypatch):
    from tests.test_robustness import BAD, make_folder

    root = make_folder(tmp_path, "2_bad.jpg", BAD["12-bit jpeg"]())  # (DALI stops on it: a rebuild follows)
    loader = DALILoader(root, batch_size=2, size=8, device="cpu", on_error="skip", shuffle=False)
    alive = _pipelines_alive_at_each_build(monkeypatch)
    with pytest.warns(UserWarning, match="skipped"):
        list(loader)
    assert len(alive) >= 2 and set(alive) == {0}  # the first build, the probes, the rebuild: one at a time


# -- 7, 8. the resizer on CUDA ------------------------------------------------------------------------


def test_the_exact_2x_bilinear_downscale_is_the_mean_of_each_block():
    from dali_resizer.resizer import resize

    x = torch.randn(2, 5, 20, 14, dtype=torch.float64, requires_grad=True)
    a, b = resize(x, (10, 7)), F.interpolate(x, size=(10, 7), mode="bilinear", align_corners=False)
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)  # (the same sums, in another order)
    weights = torch.randn_like(a)
    (ga,), (gb,) = torch.autograd.grad((a * weights).sum(), x), torch.autograd.grad((b * weights).sum(), x)
    torch.testing.assert_close(ga, gb, rtol=1e-13, atol=1e-15)
    assert a.grad_fn.name().startswith("AvgPool2D")  # (the deterministic kernel, not bilinear's)


def test_the_chunk_budget_follows_the_device():
    from dali_resizer.memory_efficient import chunk_budget, chunks

    resizer = LearnableResizer(224, memory_efficient=True)
    x = torch.empty(256, 3, 448, 448, device="meta")
    cpu, cuda = chunk_budget(resizer, "cpu"), chunk_budget(resizer, "cuda")
    assert len(chunks(x, 16, cpu)) == 256  # one image at a time fits a CPU's caches
    assert len(chunks(x, 16, cuda)) <= 4  # a few launches per batch on a GPU
    resizer.chunk_bytes = 1
    assert chunk_budget(resizer, "cuda") == 1  # an explicit budget wins


@pytest.mark.needs_cuda
def test_resizer_training_steps_are_deterministic_on_cuda():
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            torch.manual_seed(0)
            resizer = LearnableResizer(112).cuda().to(memory_format=torch.channels_last)
            x = torch.randn(4, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                resizer(x).float().square().mean().backward()
            grads.append(torch.cat([p.grad.flatten() for p in resizer.parameters()]))
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    finally:
        torch.use_deterministic_algorithms(False)


# -- 12. on a GPU -------------------------------------------------------------------------------------


def _eval_batches(source, device, **kw):
    loader = DALILoader(source, batch_size=4, size=32, train=False, shuffle=False, device=device, **kw)
    return [(x.float().cpu(), y.cpu()) for x, y in loader]


@pytest.mark.needs_cuda
@pytest.mark.parametrize("roi_decode", [True, False])  # (nvJPEG's window decode; whole, the hardware decoder's)
def test_gpu_batches_are_the_cpu_batches_within_the_decoders_tolerance(image_folder, roi_decode):
    cpu = _eval_batches(image_folder, "cpu")
    gpu = _eval_batches(image_folder, "cuda", roi_decode=roi_decode)
    assert [y.tolist() for _, y in cpu] == [y.tolist() for _, y in gpu]
    diff = torch.cat([(a - b).abs().flatten() for (a, _), (b, _) in zip(cpu, gpu)])
    # (normalized units: 1/255 of a channel is ~0.017) nvJPEG's IDCT against libjpeg-turbo's, same upsampling
    assert float(diff.mean()) < 0.02 and float(diff.max()) < 0.25


@pytest.mark.needs_cuda
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_batches_on_the_gpu(image_folder, dtype, tolerance):
    full = _eval_batches(image_folder, "cuda")
    half = DALILoader(image_folder, batch_size=4, size=32, train=False, shuffle=False, device="cuda", dtype=dtype)
    for (a, _), (b, _) in zip(full, half):
        assert b.dtype == dtype and b.is_cuda
        torch.testing.assert_close(b.float().cpu(), a, rtol=tolerance, atol=tolerance)


@pytest.mark.needs_cuda
def test_gpu_batches_are_handed_over_without_a_copy_and_stay_intact(image_folder):
    loader = DALILoader(image_folder, batch_size=4, size=64, train=False, shuffle=False, device="cuda")
    it = iter(loader)
    first, _ = next(it)
    kept = first.clone()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    second, _ = next(it)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before < second.numel() * second.element_size()  # DALI's memory
    rest = list(it)  # later batches do not overwrite an earlier one still held
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    assert rest and second.is_cuda


@pytest.mark.needs_cuda
@pytest.mark.parametrize("roi_decode", [True, False])
def test_resume_mid_epoch_on_the_gpu_is_exact(image_folder, roi_decode):
    def make():
        return DALILoader(image_folder, batch_size=4, size=32, seed=3, device="cuda", roi_decode=roi_decode)

    whole = [x.clone() for x, _ in make()]
    first = make()
    it = iter(first)
    next(it)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    tail = [x.clone() for x, _ in resumed]
    assert len(tail) == len(whole) - 1
    for a, b in zip(whole[1:], tail):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("bad", [1, 2])  # one bad file, or a whole batch of them
def test_skip_on_error_with_the_gpu_decoder(tmp_path, bad):
    from tests.test_robustness import BAD, make_folder

    root = make_folder(tmp_path)
    for k in range(bad):
        (root / "b" / f"2_bad{k}.jpg").write_bytes(BAD["12-bit jpeg"]())  # (sorted next to each other)
    loader = DALILoader(root, batch_size=2, size=16, device="cuda", on_error="skip", shuffle=False,
                        return_index=True)
    with pytest.warns(UserWarning, match="skipped"):
        indices = [i for _, _, idx in loader for i in idx.tolist() if i >= 0]
    assert len(loader.skipped) == bad and all("12-bit JPEG" in p for p in loader.skipped.values())
    assert sorted(indices) == sorted(set(range(len(loader.dataset))) - {
        loader.dataset.files.index(f) for f in loader.skipped})


@pytest.mark.needs_cuda
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_resizer_training_steps_on_cuda_bf16_channels_last(memory_efficient):
    torch.manual_seed(0)
    reference = LearnableResizer(56).cuda()
    variant = LearnableResizer(56, memory_efficient=memory_efficient).cuda().to(memory_format=torch.channels_last)
    variant.load_state_dict(reference.state_dict())
    x = torch.randn(6, 3, 112, 112, device="cuda")
    want = reference(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = variant(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-2)
    got.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in variant.parameters())


def test_a_gpu_batch_failing_with_no_bad_sample_points_at_whole_image_decoding(image_folder):
    """A batch that fails on the GPU although each of its samples decodes alone (there whole, with the same
    decoder) may be nvImageCodec's window decoding: the error says what to try."""
    from dali_resizer.samples import BadSampleError

    for roi_decode, on_gpu, hinted in ((True, False, False), (True, True, True), (False, True, False)):
        reader = DALILoader(image_folder, batch_size=2, size=8, device="cpu", roi_decode=roi_decode)._reader
        reader.plan.pipeline["device_id"] = 0 if on_gpu else None  # (as a loader on GPU 0 has it)
        with pytest.raises(BadSampleError, match="no single sample fails alone: nvImageCodec failure") as raised:
            failure = DaliFailure("sample", "nvImageCodec failure: '#8'")
            reader.report({}, [], failure, "files a.jpg", RuntimeError("DALI"))
        assert ("roi_decode=False decodes whole images" in str(raised.value)) == hinted


# -- whole-image decoding, the GPU default --------------------------------------------------------------


def test_window_decoding_is_the_cpu_default(image_folder):
    assert DALILoader(image_folder, batch_size=4, size=8, device="cpu").roi_decode is True


@pytest.mark.needs_cuda
def test_whole_image_decoding_is_the_gpu_default_and_window_decoding_warns(image_folder):
    """nvImageCodec 0.9 (DALI 2.4's) fails on window decoding on A100/H100-class GPUs (issue 55): a GPU
    loader decodes whole images unless asked, and asking says why it may fail."""
    loader = DALILoader(image_folder, batch_size=4, size=16, device="cuda", return_index=True)
    assert loader.roi_decode is False
    images, _, indices = next(iter(loader))
    assert images.is_cuda and images.shape == (4, 3, 16, 16) and indices.tolist() == [0, 1, 2, 3]
    with pytest.warns(UserWarning, match="nvImageCodec issue 55"):
        DALILoader(image_folder, batch_size=4, size=16, device="cuda", roi_decode=True)
