"""DALILoader against the DataLoader contract, with the real DALI CPU pipeline."""

import os

import pytest
import torch

from dali_resizer import DALILoader
from dali_resizer.loader import PAD_LABEL
from tests.conftest import write_shards


def epoch_indices(loader):
    return [i for _, _, idx in loader for i in idx.tolist()]


def test_classes_and_samples_equal_torchvision_imagefolder(image_folder):
    from torchvision.datasets import ImageFolder

    reference = ImageFolder(str(image_folder))
    loader = DALILoader(image_folder, batch_size=4, size=16)
    assert loader.classes == reference.classes
    assert loader.class_to_idx == reference.class_to_idx
    assert loader.dataset.files == [path for path, _ in reference.samples]
    assert loader.dataset.targets == reference.targets


def test_batches_are_images_and_labels(image_folder):
    loader = DALILoader(image_folder, batch_size=4, size=(24, 20), shuffle=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    images, labels = batches[0]
    assert images.shape == (4, 3, 24, 20) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert labels.shape == (4,) and labels.dtype == torch.int64 and labels.device.type == "cpu"
    assert [int(b[1].shape[0]) for b in batches] == [4, 4, 3]
    # Unshuffled: labels in source order, as ImageFolder's targets.
    assert torch.cat([b[1] for b in batches]).tolist() == loader.dataset.targets


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 4, 11, 16])
def test_epoch_yields_every_sample_exactly_once(image_folder, train, batch_size):
    loader = DALILoader(image_folder, batch_size=batch_size, size=16, train=train, return_index=True)
    seen, count = [], 0
    for images, labels, indices in loader:
        assert images.shape[0] == labels.shape[0] == indices.shape[0]
        assert labels.tolist() == [loader.dataset.targets[i] for i in indices.tolist()]  # labels never shift
        seen += indices.tolist()
        count += 1
    assert sorted(seen) == list(range(11))
    assert count == len(loader) == -(-11 // batch_size)


@pytest.mark.parametrize(("batch_size", "expected"), [(4, 2), (11, 1), (12, 0)])
def test_drop_last(image_folder, batch_size, expected):
    loader = DALILoader(image_folder, batch_size=batch_size, size=16, drop_last=True, return_index=True)
    batches = list(loader)
    assert len(batches) == len(loader) == expected
    assert all(b[0].shape[0] == batch_size for b in batches)
    indices = [i for b in batches for i in b[2].tolist()]
    assert len(set(indices)) == len(indices) == expected * batch_size


def test_set_epoch_gives_new_reproducible_orders(image_folder):
    def order(seed, epoch):
        loader = DALILoader(image_folder, batch_size=4, size=16, seed=seed, shuffle=True, return_index=True)
        loader.set_epoch(epoch)
        return epoch_indices(loader)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 1) == order(0, 1)
    assert order(0, 0) != order(1, 0)
    assert sorted(order(1, 5)) == list(range(11))


def test_augmentations_depend_on_seed_and_epoch_only(image_folder):
    """The same files (no shuffling), so only the crops and flips differ: equal for the same
    (seed, epoch) in two fresh loaders, different for another epoch or another seed."""
    def first_batch(epoch, seed=7):
        loader = DALILoader(image_folder, batch_size=4, size=16, seed=seed, shuffle=False, train=True)
        loader.set_epoch(epoch)
        return next(iter(loader))[0]

    again = first_batch(2)
    torch.testing.assert_close(first_batch(2), again, rtol=0, atol=0)
    assert not torch.equal(first_batch(3), again)
    assert not torch.equal(first_batch(2, seed=8), again)


def test_iterating_again_advances_the_epoch(image_folder):
    loader = DALILoader(image_folder, batch_size=4, size=16, shuffle=True, return_index=True)
    first, second = epoch_indices(loader), epoch_indices(loader)
    assert first != second and sorted(first) == sorted(second) == list(range(11))
    loader.set_epoch(0)
    assert epoch_indices(loader) == first


def test_no_shuffle_keeps_source_order(image_folder):
    loader = DALILoader(image_folder, batch_size=4, size=16, train=True, shuffle=False, return_index=True)
    assert epoch_indices(loader) == list(range(11))


def test_eval_mode_does_not_shuffle_by_default_and_is_deterministic(image_folder):
    loader = DALILoader(image_folder, batch_size=4, size=16, train=False, return_index=True)
    assert epoch_indices(loader) == list(range(11))
    a, b = [x for x, _, _ in loader], [x for x, _, _ in loader]
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(("num_shards", "batch_size"), [(2, 2), (3, 2), (4, 3), (5, 2), (12, 2), (2, 5)])
def test_shards_partition_the_epoch(image_folder, num_shards, batch_size, drop_last):
    """11 samples: every shard yields the same number of batches; with drop_last=False the real samples
    of all shards are the source exactly once and the rest is marked padding."""
    parts, counts = [], []
    for shard_id in range(num_shards):
        loader = DALILoader(image_folder, batch_size=batch_size, size=16, shard_id=shard_id, num_shards=num_shards,
                            seed=3, drop_last=drop_last, return_index=True)
        loader.set_epoch(4)
        batches = list(loader)
        counts.append(len(batches))
        assert len(batches) == len(loader)
        for images, labels, indices in batches:
            assert images.shape[0] == labels.shape[0] == indices.shape[0]
            assert ((labels == PAD_LABEL) == (indices == -1)).all()
        parts.append([i for _, _, idx in batches for i in idx.tolist()])
    assert len(set(counts)) == 1  # DDP-safe: nobody waits on a rank that ran out
    real = [i for part in parts for i in part if i >= 0]
    if drop_last:
        assert len(set(real)) == len(real) == counts[0] * batch_size * num_shards
    else:
        assert sorted(real) == list(range(11))
        assert all(len(part) == -(-11 // num_shards) for part in parts)


def test_float16(image_folder):
    images, _ = next(iter(DALILoader(image_folder, batch_size=4, size=16, dtype=torch.float16)))
    assert images.dtype == torch.float16


# -- WebDataset shards ------------------------------------------------------------------------------


def shard_labels(loader):
    return sorted(int(y) for _, labels in loader for y in labels)


@pytest.mark.parametrize("form", ["dir", "list", "brace", "single"])
def test_shard_sources(shard_dir, tmp_path, form):
    tars = sorted(str(p) for p in shard_dir.glob("*.tar"))
    source, total = {
        "dir": (shard_dir, 13),
        "list": (tars, 13),
        "brace": (str(shard_dir / "train-{000000..000002}.tar"), 13),
        "single": (tars[0], 5),
    }[form]
    loader = DALILoader(source, batch_size=4, size=(12, 18), index_dir=tmp_path)
    assert len(loader) == -(-total // 4)
    batches = list(loader)
    assert len(batches) == len(loader)
    assert batches[0][0].shape == (4, 3, 12, 18)
    expected = sorted(i % 3 for i in range(13))[: total] if form != "single" else sorted(i % 3 for i in range(5))
    assert shard_labels(batches) == expected


def test_missing_index_is_built_once_into_the_cache(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shards(shards, [3, 2])
    cache = tmp_path / "cache"
    DALILoader(shards, batch_size=2, size=8, index_dir=cache)
    built = sorted(cache.glob("*.idx"))
    assert len(built) == 2
    mtimes = [p.stat().st_mtime_ns for p in built]
    DALILoader(shards, batch_size=2, size=8, index_dir=cache)
    assert [p.stat().st_mtime_ns for p in sorted(cache.glob("*.idx"))] == mtimes
    assert not list(shards.glob("*.idx"))  # nothing written beside the user's data


def test_shards_shuffled_epoch_covers_every_sample_once(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shards(shards, [7, 6, 5, 4])  # 22 samples; label i % 3 -> 8 zeros, 7 ones, 7 twos
    loader = DALILoader(shards, batch_size=4, size=8, index_dir=tmp_path / "idx", seed=1)
    for epoch in range(2):
        loader.set_epoch(epoch)
        assert shard_labels(loader) == sorted(i % 3 for i in range(22))


def test_shards_split_across_shard_ids(shard_dir, tmp_path):
    counts, labels, batches = [], [], []
    for shard_id in range(2):
        loader = DALILoader(shard_dir, batch_size=3, size=8, shard_id=shard_id, num_shards=2, index_dir=tmp_path)
        got = shard_labels(loader)
        counts.append(len(got))
        batches.append(len(list(loader)))
        assert len([y for y in got if y != PAD_LABEL]) == loader.num_samples
        labels += got
    assert counts == [7, 7] and batches == [3, 3]  # 6 + 7 samples: the first shard gets one padding sample
    assert sorted(y for y in labels if y != PAD_LABEL) == sorted(i % 3 for i in range(13))


def test_classes_sidecar_for_shards(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shards(shards, [3])
    (shards / "classes.txt").write_text("ant\nbee\ncow\n")
    loader = DALILoader(shards, batch_size=2, size=8, index_dir=tmp_path / "idx")
    assert loader.classes == ["ant", "bee", "cow"] and loader.class_to_idx == {"ant": 0, "bee": 1, "cow": 2}


def test_non_integer_label_is_a_clear_error(tmp_path):
    import numpy as np
    import webdataset as wds

    from tests.conftest import encode, random_image

    path = tmp_path / "bad.tar"
    with wds.TarWriter(str(path)) as sink:
        image = encode(random_image(np.random.default_rng(0), 20, 20))
        sink.write({"__key__": "good", "jpg": image, "cls": b"1"})
        sink.write({"__key__": "bad", "jpg": image, "cls": b"cat"})
    with pytest.raises(ValueError, match=r"bad\.tar \(sample bad\): label 'cat' is not a non-negative integer"):
        list(DALILoader(path, batch_size=2, size=8, index_dir=tmp_path / "idx"))


# -- bad arguments ----------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DALILoader(tmp_path / "nowhere", batch_size=2)


def test_folder_without_class_folders(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}: no class folders"):
        DALILoader(tmp_path, batch_size=2)


def test_class_folder_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"hold no image \(a\)"):
        DALILoader(tmp_path, batch_size=2)


def test_missing_shard(tmp_path):
    write_shards(tmp_path, [2], prefix="x")  # x-000000.tar exists, x-000001.tar does not
    with pytest.raises(FileNotFoundError, match="x-000001.tar"):
        DALILoader(str(tmp_path / "x-{000000..000001}.tar"), batch_size=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2, "size": 0}, "size"),
        ({"batch_size": 2, "size": (4, 4, 4)}, "size"),
        ({"batch_size": 2, "num_threads": 0}, "num_threads"),
        ({"batch_size": 2, "shard_id": 2, "num_shards": 2}, "shard_id"),
        ({"batch_size": 2, "dtype": torch.int8}, "dtype"),
        ({"batch_size": 2, "device": "tpu"}, "device"),
        ({"batch_size": 2, "random_area": (0.5, 1.5)}, "random_area"),
        ({"batch_size": 2, "random_aspect_ratio": (2.0, 1.0)}, "random_aspect_ratio"),
    ],
)
def test_bad_arguments(image_folder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DALILoader(image_folder, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a host without a GPU")
def test_cuda_without_gpu_is_a_clear_error(image_folder):
    with pytest.raises(ValueError, match="CUDA is not available"):
        DALILoader(image_folder, batch_size=2, device="cuda")


def test_default_device_without_gpu_is_cpu(image_folder):
    loader = DALILoader(image_folder, batch_size=2, size=8)
    assert loader.device == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))


@pytest.mark.needs_cuda
def test_gpu_batches_stay_on_the_device(image_folder):
    loader = DALILoader(image_folder, batch_size=4, size=32, device="cuda", return_index=True)
    images, labels, indices = next(iter(loader))
    assert images.is_cuda and labels.is_cuda and indices.is_cuda
    assert images.shape == (4, 3, 32, 32)
    assert sorted(epoch_indices(loader)) == list(range(11))


def test_num_threads_default_is_the_usable_cores(image_folder):
    expected = len(os.sched_getaffinity(0))
    assert DALILoader(image_folder, batch_size=2).num_threads == expected


def test_eval_pipeline_is_reused_and_rewound(image_folder, monkeypatch):
    """An unshuffled evaluation is the same pass every epoch: its pipeline is rewound, not built again
    (DALI's ``Pipeline`` objects counted); a pass broken off mid-epoch is not rewound (DALI cannot)."""
    from nvidia.dali import Pipeline

    builds = []
    build = Pipeline.build

    def counted(self):
        if not getattr(self, "counted_by_test", False):  # (DALI calls build() again on a built pipeline)
            self.counted_by_test = True
            builds.append(1)
        return build(self)

    monkeypatch.setattr(Pipeline, "build", counted)
    loader = DALILoader(image_folder, batch_size=4, size=16, train=False, return_index=True)
    first = epoch_indices(loader)
    assert len(builds) == 1
    assert epoch_indices(loader) == first == list(range(11))
    assert len(builds) == 1  # rewound, not rebuilt
    it = iter(loader)
    next(it)
    del it
    assert epoch_indices(loader) == list(range(11))
    assert len(builds) == 2  # (the broken pass kept it; the next pass built its own)


def test_full_area_square_crop_keeps_the_whole_image(tmp_path):
    """random_area=(1, 1) and ratio (1, 1) on a square image: only the flip remains random."""
    import numpy as np
    from PIL import Image

    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:, :8] = 255  # a white band on the left quarter
    (tmp_path / "a").mkdir()
    Image.fromarray(pixels).save(tmp_path / "a" / "x.png")
    loader = DALILoader(tmp_path, batch_size=1, size=32, train=True, random_area=(1, 1), random_aspect_ratio=(1, 1))
    seen = set()
    for epoch in range(8):
        loader.set_epoch(epoch)
        (image, _), = list(loader)
        column_means = image[0, 0].mean(dim=0)
        bright = (column_means > 0).nonzero().flatten().tolist()
        seen.add(tuple(bright))
    assert seen <= {tuple(range(8)), tuple(range(24, 32))}  # unflipped or flipped, never cropped/scaled


# -- resume -----------------------------------------------------------------------------------------


def collect(loader, stop_after=None):
    out = []
    for images, labels, indices in loader:
        out.append((images.clone(), labels.tolist(), indices.tolist()))
        if stop_after is not None and len(out) == stop_after:
            break
    return out


@pytest.mark.parametrize("stop_after", [1, 2])
def test_resume_mid_epoch_yields_what_an_uninterrupted_run_would(image_folder, stop_after):
    def make():
        return DALILoader(image_folder, batch_size=4, size=16, seed=5, return_index=True)

    reference = make()
    reference.set_epoch(3)
    full = collect(reference)

    first = make()
    first.set_epoch(3)
    it = iter(first)
    head = [next(it) for _ in range(stop_after)]
    state = first.state_dict()
    assert state["epoch"] == 3 and state["batches_done"] == stop_after and state["dali"]
    del it

    resumed = make()
    resumed.load_state_dict(state)
    tail = collect(resumed)
    assert len(head) + len(tail) == len(full) == len(resumed)
    for (a, la, ia), (b, lb, ib) in zip(full[stop_after:], tail):
        assert ia == ib and la == lb
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same crops and flips too
    assert resumed.state_dict()["epoch"] == 4  # the epoch finished; the next one is due


def test_state_between_epochs_and_mismatch(image_folder):
    loader = DALILoader(image_folder, batch_size=4, size=16)
    list(loader)
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == 0 and state["dali"] is None
    other = DALILoader(image_folder, batch_size=4, size=16, seed=9)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


def test_resume_on_shards(shard_dir, tmp_path):
    def make():
        return DALILoader(shard_dir, batch_size=3, size=8, seed=2, index_dir=tmp_path)

    full = [(x.clone(), y.tolist()) for x, y in make()]
    first = make()
    it = iter(first)
    next(it)
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    tail = [(x.clone(), y.tolist()) for x, y in resumed]
    assert [y for _, y in tail] == [y for _, y in full[1:]]
    for (a, _), (b, _) in zip(full[1:], tail):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_state_loads_only_into_a_loader_built_the_same_way(image_folder):
    """A position counts batches of one size, and DALI's checkpoint is of one graph: another batch size
    or evaluation mode is refused, naming what to build instead."""
    loader = DALILoader(image_folder, batch_size=4, size=16, shuffle=True, return_index=True)
    batches = iter(loader)
    next(batches)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="batch_size=4, this loader has batch_size=2.*build it with batch_size=4"):
        DALILoader(image_folder, batch_size=2, size=16, shuffle=True).load_state_dict(state)
    with pytest.raises(ValueError, match="train=True, this loader has train=False"):
        DALILoader(image_folder, batch_size=4, size=16, train=False, shuffle=True).load_state_dict(state)
    resumed = DALILoader(image_folder, batch_size=4, size=16, shuffle=True, return_index=True)
    resumed.load_state_dict(state)
    assert epoch_indices(resumed) == [i for _, _, idx in batches for i in idx.tolist()]  # the rest, as it was


@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 2)])
def test_a_state_at_an_epoch_boundary_loads_into_another_world_size(shard_dir, before, after):
    """Shards (13 samples): N ranks finish epoch 0; their states load into M ranks, which read epoch 1
    exactly as M fresh ranks would, every sample once. A mid-epoch state is refused elsewhere."""
    def world(n):
        return [DALILoader(shard_dir, batch_size=2, size=8, seed=5, shard_id=k, num_shards=n, return_index=True)
                for k in range(n)]

    old = world(before)
    states = []
    for loader in old:
        list(loader)  # epoch 0, whole
        states.append(loader.state_dict())
    assert {s["epoch"] for s in states} == {1} and not any(s["batches_done"] for s in states)
    resumed, fresh = world(after), world(after)
    for k, loader in enumerate(resumed):
        loader.load_state_dict(states[k % before])
    for loader in fresh:
        loader.set_epoch(1)
    got = [[lab.tolist() for _, lab, _ in loader] for loader in resumed]
    assert got == [[lab.tolist() for _, lab, _ in loader] for loader in fresh]
    assert sorted(y for rank in got for batch in rank for y in batch if y != PAD_LABEL) == sorted(
        i % 3 for i in range(13))
    mid = world(before)[0]
    next(iter(mid))
    with pytest.raises(ValueError, match="a mid-epoch state of one rank resumes in the world that saved it; pass "
                       "the list of every rank's states"):
        world(after)[0].load_state_dict(mid.state_dict())


def _world(source, n, batch_size=2, **kw):
    return [DALILoader(source, batch_size=batch_size, size=8, seed=5, shard_id=k, num_shards=n, return_index=True,
                       num_threads=1, **kw) for k in range(n)]


def _read(loaders, epoch=None, stop=None) -> tuple[list[list[list[int]]], list[dict]]:
    """Each loader's sample indices per batch (``stop`` batches, else the whole epoch), and the states
    taken there."""
    got = []
    for loader in loaders:
        if epoch is not None:
            loader.set_epoch(epoch)
        batches = []
        for _, _, idx in loader:
            batches.append(idx.tolist())
            if stop is not None and len(batches) == stop:
                break
        got.append(batches)
    return got, [loader.state_dict() for loader in loaders]


def _real(got) -> list[int]:
    return [i for rank in got for batch in rank for i in batch if i >= 0]


@pytest.mark.parametrize(("kind", "before", "after", "stop"), [
    ("shards", 2, 3, 2), ("shards", 3, 2, 1), ("folder", 2, 3, 1), ("folder", 3, 2, 1), ("shards", 1, 4, 3)])
def test_mid_epoch_states_of_a_world_load_into_another_world_size(image_folder, tmp_path, kind, before, after, stop):
    """N ranks stop mid-epoch (shuffled, so a shard's reader has read ahead of what it delivered);
    their states, all together, load into M ranks with another batch size, which read the rest of
    the epoch: every sample exactly once across both worlds, equal batch counts (``len``), and the
    next epoch is a whole one, as a fresh world reads it."""
    if kind == "shards":
        source = tmp_path / "shards"
        source.mkdir()
        write_shards(source, [9, 7, 8, 6], unique_labels=True)  # 30 samples, 4 tars
        total, kw = 30, {"index_dir": tmp_path / "idx"}
    else:
        source, total, kw = image_folder, 11, {}
    head, states = _read(_world(source, before, **kw), epoch=1, stop=stop)
    assert all(s["batches_done"] == stop for s in states)
    resumed = _world(source, after, batch_size=3, **kw)
    for loader in resumed:
        loader.load_state_dict(states)
    lengths = {len(loader) for loader in resumed}
    rest, after_states = _read(resumed)
    assert sorted(_real(head) + _real(rest)) == list(range(total))  # the epoch: each sample once
    assert lengths == {len(batches) for batches in rest} and len(lengths) == 1  # every rank the same count
    assert {s["epoch"] for s in after_states} == {2} and not any("carried" in s for s in after_states)
    fresh = _world(source, after, batch_size=3, **kw)
    assert _read(resumed)[0] == _read(fresh, epoch=2)[0]  # then whole epochs, as any world of M reads them


def test_an_epoch_taken_over_resumes_again_in_its_world_or_another(tmp_path):
    """2 ranks -> 3 mid-epoch; the 3 stop again: their own states resume exactly (same batches, same
    pixels), and all three together load into 2 ranks, the epoch still read once in all."""
    source = tmp_path / "shards"
    source.mkdir()
    write_shards(source, [9, 7, 8, 6], unique_labels=True)
    kw = {"index_dir": tmp_path / "idx"}
    head, states = _read(_world(source, 2, **kw), epoch=0, stop=2)

    def taken_over():
        world = _world(source, 3, **kw)
        for loader in world:
            loader.load_state_dict(states)
        return world

    whole = [[(x.clone(), idx.tolist()) for x, _, idx in loader] for loader in taken_over()]
    middle, middle_states = _read(taken_over(), stop=1)
    assert all("carried" in s for s in middle_states)
    again = _world(source, 3, **kw)
    for loader, state in zip(again, middle_states):
        loader.load_state_dict(state)  # one rank's own state, in its world: exact
    for loader, batches in zip(again, whole):
        tail = [(x.clone(), idx.tolist()) for x, _, idx in loader]
        assert [i for _, i in tail] == [i for _, i in batches[1:]]
        for (a, _), (b, _) in zip(tail, batches[1:]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    two = _world(source, 2, batch_size=4, **kw)
    for loader in two:
        loader.load_state_dict(middle_states)
    rest, _ = _read(two)
    assert sorted(_real(head) + _real(middle) + _real(rest)) == list(range(30))


def test_states_that_are_not_one_world_are_refused(shard_dir, tmp_path):
    _, states = _read(_world(shard_dir, 3, index_dir=tmp_path), epoch=0, stop=1)
    loader = _world(shard_dir, 2, index_dir=tmp_path)[0]
    with pytest.raises(ValueError, match=r"not one world's: shards \[0, 2\].*pass every rank's state"):
        loader.load_state_dict([states[0], states[2]])
    with pytest.raises(ValueError, match=r"not one world's: shards \[0, 0, 1, 2\]"):
        loader.load_state_dict([states[0], *states])
