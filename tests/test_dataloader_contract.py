"""DALILoader as a drop-in for ``torch.utils.data.DataLoader``: epochs, iterators, defaults, attributes,
samplers and states, as training scripts and frameworks use them; the real DALI CPU pipeline."""

import _thread
import signal
import threading
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler, default_collate

from dali_resizer import DALILoader
from tests.conftest import write_jpeg_folder, write_shards


def indices_of(loader_or_iterator) -> list[int]:
    return [i for _, _, idx in loader_or_iterator for i in idx.tolist()]


def epoch_of(make, epoch: int) -> list[int]:
    loader = make()
    loader.set_epoch(epoch)
    return indices_of(loader)


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    """40 small JPEGs in 4 classes: 20 batches of 2, time enough to be interrupted anywhere."""
    return write_jpeg_folder(tmp_path_factory.mktemp("forty"), 40, 4, seed=5)


@pytest.fixture(scope="module")
def forty_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("forty-shards")
    write_shards(root, [11, 9, 12, 8], unique_labels=True)
    return root


# -- 1. epochs and iterators --------------------------------------------------------------------------


def test_iter_alone_builds_and_changes_nothing(image_folder):
    """Lightning calls iter() once before fitting to check the loader: that must not use up an epoch."""
    def make():
        return DALILoader(image_folder, batch_size=4, size=8, shuffle=True, return_index=True)

    loader = make()
    for _ in range(3):
        iter(loader)
    assert loader.state_dict()["epoch"] == 0
    assert indices_of(loader) == epoch_of(make, 0)
    assert indices_of(loader) == epoch_of(make, 1)  # then each epoch started moves on


def test_a_peek_inside_the_loop_does_not_end_it(image_folder):
    loader = DALILoader(image_folder, batch_size=2, size=8, shuffle=True, return_index=True)
    seen, batches, peeked = [], 0, None
    for _, _, idx in loader:
        seen += idx.tolist()
        batches += 1
        if peeked is None:
            peeked = next(iter(loader))  # a look at a batch, as scripts do to get a shape
    assert sorted(seen) == list(range(11)) and batches == len(loader) == 6  # every batch of the outer loop
    assert peeked[0].shape == (2, 3, 8, 8)


def test_live_iterators_are_independent(image_folder):
    """Two iterators of one loader, read in turns: each reads its own epoch whole, as fresh loaders do."""
    def make():
        return DALILoader(image_folder, batch_size=3, size=8, shuffle=True, return_index=True)

    loader = make()
    first, second = iter(loader), iter(loader)
    a, b = [], []
    for x, y in zip(first, second):
        a += x[2].tolist()
        b += y[2].tolist()
    assert a == epoch_of(make, 0) and b == epoch_of(make, 1)
    assert list(first) == [] and list(second) == []


@pytest.mark.parametrize("how", ["loader", "sampler", "batch_sampler", "lightning"])
def test_set_epoch_reaches_the_order_however_it_is_called(image_folder, how):
    from lightning.fabric.utilities.data import _set_sampler_epoch

    def make():
        return DALILoader(image_folder, batch_size=4, size=8, shuffle=True, return_index=True)

    loader = make()
    {"loader": loader.set_epoch, "sampler": loader.sampler.set_epoch,
     "batch_sampler": loader.batch_sampler.sampler.set_epoch,
     "lightning": lambda e: _set_sampler_epoch(loader, e)}[how](3)
    assert indices_of(loader) == epoch_of(make, 3) != epoch_of(make, 0)
    assert indices_of(loader) == epoch_of(make, 4)  # without a call, the next epoch started is the next one


def test_a_distributed_sampler_made_by_the_script_decides_the_epoch(image_folder, monkeypatch):
    """torchvision's script calls set_epoch on the DistributedSampler it made: the loader follows it."""
    from torchvision.datasets import ImageFolder

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    dataset = ImageFolder(str(image_folder))
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=7)
    loader = DALILoader(image_folder, batch_size=2, sampler=sampler, size=8, return_index=True)
    assert (loader.shard_id, loader.num_shards, loader.shuffle, loader.seed, loader.train) == (1, 2, True, 7, True)
    assert len(loader.sampler) == len(sampler) == 6

    def fresh(epoch):
        other = DALILoader(image_folder, batch_size=2, shuffle=True, seed=7, size=8, return_index=True, shard_id=1,
                           num_shards=2)
        other.set_epoch(epoch)
        return indices_of(other)

    for epoch in (2, 5):
        sampler.set_epoch(epoch)
        assert indices_of(loader) == fresh(epoch)


# -- 2. exact under interruption ----------------------------------------------------------------------


def _interrupted_at(loader, delay: float) -> tuple[list[list[int]], bool, object]:
    """Iterates ``loader`` until a SIGINT handler raises KeyboardInterrupt ``delay`` seconds in (from a
    timer thread, wherever the main thread is then: inside ``next()`` or in the loop body); returns the
    batches received, whether it was interrupted, and the iterator."""
    armed = {"on": True}

    def handler(signum, frame):
        if armed["on"]:  # (once: then the test's own code runs undisturbed)
            armed["on"] = False
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    timer = threading.Timer(delay, _thread.interrupt_main)
    got, interrupted, it = [], False, iter(loader)
    try:
        try:
            timer.start()
            for batch in it:
                got.append(batch)  # (first: a call before it could be where the interrupt lands)
            armed["on"] = False
        except KeyboardInterrupt:
            interrupted = True
        armed["on"] = False
    finally:
        armed["on"] = False
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, previous)
    return [idx.tolist() for _, _, idx in got], interrupted, it


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_an_interrupt_anywhere_in_next_resumes_with_every_sample_once(forty, forty_shards, tmp_path, kind):
    """SIGTERM/SIGINT -> save -> requeue: a KeyboardInterrupt at many points of an epoch (DALI's
    hand-over included), then ``state_dict()``; a new loader that loads it yields the rest, and the same
    iterator, called again, does too: together exactly the uninterrupted epoch, batch for batch."""
    source = forty if kind == "folder" else forty_shards

    def make():
        loader = DALILoader(source, batch_size=2, shuffle=True, size=8, seed=3, return_index=True, num_threads=1,
                            index_dir=tmp_path / "idx")
        loader.set_epoch(1)
        return loader

    full = [idx.tolist() for _, _, idx in make()]
    start = time.perf_counter()
    list(make())
    span = time.perf_counter() - start  # (only to spread the interrupts over an epoch; nothing is timed)
    rng = np.random.default_rng(0)
    interrupted = 0
    for delay in rng.uniform(0, span, size=72):  # (until 12 interrupts landed inside the epoch, however fast it ran)
        if interrupted >= 12:
            break
        loader = make()
        head, stopped, it = _interrupted_at(loader, float(delay))
        interrupted += stopped
        state = loader.state_dict()
        if not stopped:  # (the epoch ended first: the state is the next epoch's start)
            assert head == full and (state["epoch"], state["batches_done"]) == (2, 0)
            continue
        resumed = make()
        resumed.load_state_dict(state)
        assert head + [idx.tolist() for _, _, idx in resumed] == full
        assert head + [idx.tolist() for _, _, idx in it] == full  # the same iterator goes on where it stood
    assert interrupted >= 12  # (an interrupt that never lands inside the epoch is not a test of one)


# -- 3. DataLoader's defaults, names and attributes -----------------------------------------------------


def test_dataloaders_defaults(image_folder):
    """``DALILoader(val_dir)`` reads as ``DataLoader(val_set)`` does: one sample a batch, in order, with
    the evaluation transform; ``shuffle`` is the third positional argument, and sets ``train``."""
    plain = DALILoader(image_folder, size=8, return_index=True)
    assert (plain.batch_size, plain.shuffle, plain.train, plain.drop_last) == (1, False, False, False)
    assert len(plain) == 11 and indices_of(plain) == list(range(11))
    evaluation = DALILoader(image_folder, 4, size=8, train=False)
    torch.testing.assert_close(torch.cat([x for x, _ in DALILoader(image_folder, 4, size=8)]),
                               torch.cat([x for x, _ in evaluation]), rtol=0, atol=0)
    training = DALILoader(image_folder, 4, True, size=8)
    assert training.shuffle and training.train
    assert not DALILoader(image_folder, 4, True, size=8, train=False).train  # (an explicit train wins)


def test_every_dataloader_attribute_is_there(image_folder):
    from torchvision.datasets import ImageFolder

    reference = DataLoader(ImageFolder(str(image_folder)), batch_size=4)
    names = [n for n in vars(reference) if not n.startswith("_")] + ["sampler", "batch_sampler", "dataset"]
    loader = DALILoader(image_folder, batch_size=4, num_workers=3, size=8)
    missing = [n for n in names if not hasattr(loader, n)]
    assert not missing
    assert (loader.num_workers, loader.timeout, loader.worker_init_fn, loader.multiprocessing_context,
            loader.generator, loader.prefetch_factor, loader.persistent_workers, loader.pin_memory_device,
            loader.in_order) == (0, 0, None, None, None, None, False, "", True)
    assert loader.num_threads == 3 and loader.collate_fn is default_collate
    assert loader.batch_sampler.sampler is loader.sampler and loader.batch_sampler.batch_size == 4
    assert len(loader.batch_sampler) == len(loader) == 3 and len(loader.sampler) == 11


def test_collate_fn_none_or_default_collate_is_accepted(image_folder):
    for collate_fn in (None, default_collate):
        images, labels = next(iter(DALILoader(image_folder, batch_size=4, size=8, collate_fn=collate_fn)))
        assert images.shape == (4, 3, 8, 8) and labels.shape == (4,)
    with pytest.raises(ValueError, match="does not take collate_fn="):
        DALILoader(image_folder, batch_size=4, collate_fn=lambda batch: batch)


def test_torch_samplers_are_mapped(image_folder):
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(image_folder))
    ordered = DALILoader(image_folder, batch_size=4, sampler=SequentialSampler(dataset), size=8, return_index=True)
    assert not ordered.shuffle and not ordered.train and indices_of(ordered) == list(range(11))
    generator = torch.Generator().manual_seed(42)
    shuffled = DALILoader(image_folder, batch_size=4, sampler=RandomSampler(dataset, generator=generator), size=8,
                          return_index=True)
    assert shuffled.shuffle and shuffled.train and shuffled.seed == 42
    assert sorted(indices_of(shuffled)) == list(range(11))
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DALILoader(image_folder, batch_size=4, shuffle=True, sampler=SequentialSampler(dataset))
    with pytest.raises(ValueError, match="replacement or num_samples"):
        DALILoader(image_folder, batch_size=4, sampler=RandomSampler(dataset, replacement=True))
    with pytest.raises(ValueError, match="covers 5 samples, the source has 11"):
        DALILoader(image_folder, batch_size=4, sampler=SequentialSampler(range(5)))
    with pytest.raises(ValueError, match="takes torch's SequentialSampler, RandomSampler or DistributedSampler"):
        DALILoader(image_folder, batch_size=4, sampler=torch.utils.data.SubsetRandomSampler([0, 1]))


def test_a_distributed_sampler_of_another_world_is_refused(image_folder, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    sampler = DistributedSampler(range(11), num_replicas=2, rank=1)
    with pytest.raises(ValueError, match="has rank=1, but this process is rank 0 of a world of 1"):
        DALILoader(image_folder, batch_size=4, sampler=sampler)


# -- 5. states that validate ------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "says"), [
    (lambda s: {}, "has no 'epoch' field"),
    (lambda s: None, "must be a dict"),
    (lambda s: s | {"batches_done": -3}, r"\['batches_done'\] must be a non-negative int, got -3"),
    (lambda s: s | {"batches_done": 99}, "batches_done=99 is past the end of its epoch"),
    (lambda s: s | {"epoch": "1"}, r"\['epoch'\] must be a non-negative int"),
    (lambda s: s | {"dali": None}, "dali=None at batch 1 of epoch 0: a mid-epoch position needs DALI's checkpoint"),
    (lambda s: s | {"delivered": [[3, 1]]}, r"\['delivered'\] must be \[start, stop\) runs"),
    (lambda s: {k: v for k, v in s.items() if k != "seed"}, "has no 'seed' field"),
])
def test_load_state_dict_refuses_what_is_not_a_state(image_folder, change, says):
    loader = DALILoader(image_folder, batch_size=4, size=8, shuffle=True)
    next(iter(loader))
    state = loader.state_dict()
    with pytest.raises(ValueError, match=says):
        DALILoader(image_folder, batch_size=4, size=8, shuffle=True).load_state_dict(change(state))


def test_a_state_taken_after_the_last_batch_is_the_next_epochs(image_folder):
    """Frameworks save at the end of an epoch before the loader raised StopIteration: that is the
    next epoch's start, not a position at the end of the last one."""
    loader = DALILoader(image_folder, batch_size=4, size=8, shuffle=True)
    it = iter(loader)
    for _ in range(len(loader)):
        next(it)
    state = loader.state_dict()
    assert (state["epoch"], state["batches_done"], state["dali"]) == (1, 0, None)


# -- 4. a torchvision dataset as the source ---------------------------------------------------------


def test_an_imagefolder_and_its_transform_are_read_by_the_pipeline(image_folder):
    """``DALILoader(ImageFolder(root, transform=T))``: the object's own files, labels and classes, and
    ``T`` (v1 or v2) run as the same settings given by hand would run."""
    from torchvision import transforms as v1
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    evaluation = ImageFolder(str(image_folder), transform=v1.Compose(
        [v1.Resize(20), v1.CenterCrop(16), v1.ToTensor(), v1.Normalize(mean, std)]))
    loader = DALILoader(evaluation, batch_size=4)
    by_hand = DALILoader(image_folder, batch_size=4, size=16, crop_ratio=0.8, mean=mean, std=std)
    assert not loader.train and loader.classes == evaluation.classes
    assert [loader.dataset[i] for i in range(len(evaluation))] == evaluation.samples
    for (x, y), (a, b) in zip(loader, by_hand, strict=True):
        assert torch.equal(x, a) and torch.equal(y, b)

    training = ImageFolder(str(image_folder), transform=v2.Compose([
        v2.RandomResizedCrop(12, scale=(0.5, 1.0), ratio=(0.9, 1.1)), v2.RandomHorizontalFlip(), v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]))
    loader = DALILoader(training, batch_size=4, shuffle=True, seed=2)
    by_hand = DALILoader(image_folder, batch_size=4, shuffle=True, seed=2, size=12, random_area=(0.5, 1.0),
                         random_aspect_ratio=(0.9, 1.1), mean=mean, std=std)
    assert loader.train and (loader.random_area, loader.random_aspect_ratio) == ((0.5, 1.0), (0.9, 1.1))
    for (x, y), (a, b) in zip(loader, by_hand, strict=True):
        assert torch.equal(x, a) and torch.equal(y, b)


@pytest.mark.parametrize(("steps", "says"), [
    (lambda T: [T.Resize(20), T.CenterCrop(16), T.ColorJitter(0.4), T.ToTensor()],
     "evaluation graph .* does not augment"),
    (lambda T: [T.Resize((20, 20)), T.CenterCrop(16), T.ToTensor()], "shorter side to an int"),
    (lambda T: [T.Resize(20, interpolation=T.InterpolationMode.BOX), T.CenterCrop(16)], "not box"),
    (lambda T: [T.RandomResizedCrop(16), T.ToTensor(), T.RandomHorizontalFlip()], "after the conversion to floats"),
    (lambda T: [T.RandomResizedCrop(16), T.ColorJitter(0.4), T.TrivialAugmentWide()], "put ColorJitter after it"),
    (lambda T: [T.RandomResizedCrop(16), T.ColorJitter(brightness=(0.5, 1.2))], "range centred on 1"),
    (lambda T: [T.RandomResizedCrop(16), T.AutoAugment(T.AutoAugmentPolicy.CIFAR10)], "not cifar10"),
    (lambda T: [T.RandomResizedCrop(16), T.TrivialAugmentWide(fill=128)], "fill the uncovered corners with 0"),
    (lambda T: [T.RandomResizedCrop(16), T.RandAugment(), T.TrivialAugmentWide()], "a second one"),
    (lambda T: [T.RandomResizedCrop(16), T.ToTensor(), T.RandomErasing(), T.Normalize((0.5,) * 3, (0.5,) * 3)],
     "put RandomErasing after Normalize"),
    (lambda T: [T.RandomResizedCrop(16), T.ToTensor(), T.RandomErasing(value=(0.1, 0.2, 0.3))],
     "one number for every channel"),
    (lambda T: [T.RandomResizedCrop(16), T.GaussianBlur(3), T.ToTensor()], "GaussianBlur.*apply other steps"),
    (lambda T: [T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)], "has no crop"),
    (lambda T: [T.Resize(20), T.CenterCrop(16), T.PILToTensor()], "ends in uint8 tensors"),
])
def test_a_transform_the_pipeline_does_not_have_is_refused_by_name(image_folder, steps, says):
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(image_folder), transform=transforms.Compose(steps(transforms)))
    with pytest.raises(ValueError, match=says):
        DALILoader(dataset, batch_size=4)


def test_a_dataset_folder_read_some_other_way_is_refused(image_folder):
    from torchvision.datasets import DatasetFolder, ImageFolder
    from torchvision.datasets.folder import default_loader

    images = DatasetFolder(str(image_folder), loader=default_loader, extensions=(".jpg", ".jpeg", ".png"))
    assert len(DALILoader(images, batch_size=4, size=8).dataset) == len(images) == 11
    with pytest.raises(ValueError, match="reads its files with"):
        DALILoader(DatasetFolder(str(image_folder), loader=open, extensions=(".jpg",)), batch_size=4)
    with pytest.raises(ValueError, match="target_transform"):
        DALILoader(ImageFolder(str(image_folder), target_transform=lambda y: y + 1), batch_size=4)
    with pytest.raises(ValueError, match="train=True, but the dataset's transform is an evaluation one"):
        from torchvision import transforms as T

        DALILoader(ImageFolder(str(image_folder), transform=T.Compose([T.Resize(9), T.CenterCrop(8)])),
                   batch_size=4, train=True)


def test_a_shard_sample_is_indexed_by_its_tar_and_key(shard_dir, tmp_path):
    loader = DALILoader(shard_dir, batch_size=4, size=8, index_dir=tmp_path)
    tars = sorted(str(p) for p in shard_dir.glob("*.tar"))
    assert [loader.dataset[i] for i in (0, 4, 5, 12)] == [
        (tars[0], "sample-00000"), (tars[0], "sample-00004"), (tars[1], "sample-00005"), (tars[2], "sample-00012")]
    with pytest.raises(IndexError):
        loader.dataset[13]
