"""DALILoader's DataLoader surface: torch's argument names, ``.dataset``, normalization, dtype, layout,
and the padding mask; the real DALI CPU pipeline throughout."""

import warnings

import pytest
import torch

from dali_resizer import PAD_LABEL, DALILoader, real_mask
from dali_resizer.samples import IMAGENET_STD


def one_pass(loader):
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def test_num_workers_is_torchs_name_for_dali_threads(image_folder):
    assert DALILoader(image_folder, batch_size=4, num_workers=3).num_threads == 3
    assert DALILoader(image_folder, batch_size=4, num_workers=0).num_threads == 1  # (no worker processes)
    with pytest.raises(ValueError, match="num_threads= or num_workers="):
        DALILoader(image_folder, batch_size=4, num_workers=2, num_threads=2)
    with pytest.raises(ValueError, match="num_workers must be a non-negative int"):
        DALILoader(image_folder, batch_size=4, num_workers=-1)


def test_prefetch_factor_is_the_prefetch_queue_depth(image_folder):
    loader = DALILoader(image_folder, batch_size=4, size=16, prefetch_factor=3, shuffle=False)
    assert loader.prefetch_queue_depth == 3
    assert DALILoader(image_folder, batch_size=4).prefetch_queue_depth == 2
    with pytest.raises(ValueError, match="not both"):
        DALILoader(image_folder, batch_size=4, prefetch_factor=3, prefetch_queue_depth=3)
    assert len(one_pass(loader)[1]) == 11


def test_a_typical_training_scripts_arguments_work(image_folder):
    """The arguments a DataLoader line passes, as a script passes them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = DALILoader(image_folder, batch_size=4, shuffle=True, num_workers=2, pin_memory=True,
                            drop_last=True, persistent_workers=True, prefetch_factor=2, collate_fn=None,
                            sampler=None, timeout=0, size=16, device="cpu")
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 16, 16) and labels.shape == (4,)
    if torch.cuda.is_available():
        assert images.is_pinned() and labels.is_pinned()
    else:  # nothing to pin for: said once, as DataLoader does
        assert any("pin_memory" in str(w.message) for w in caught)


@pytest.mark.parametrize(("name", "value", "says"), [
    ("collate_fn", lambda batch: batch, "transform them after the loader"),
    ("sampler", object(), "shuffle=, seed= and set_epoch"),
    ("batch_sampler", object(), "batch_size= and drop_last="),
    ("worker_init_fn", lambda worker: None, "no worker processes"),
    ("generator", torch.Generator(), "seed="),
])
def test_dataloader_arguments_with_no_dali_meaning_say_what_to_use(image_folder, name, value, says):
    with pytest.raises(ValueError, match=f"does not take {name}=") as info:
        DALILoader(image_folder, batch_size=4, **{name: value})
    assert says in str(info.value)


def test_an_unknown_argument_is_a_type_error(image_folder):
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_wrokers'"):
        DALILoader(image_folder, batch_size=4, num_wrokers=2)


def test_dataset_has_len_and_classes(image_folder, shard_dir):
    from torchvision.datasets import ImageFolder

    reference = ImageFolder(str(image_folder))
    loader = DALILoader(image_folder, batch_size=4)
    assert len(loader.dataset) == len(reference) == 11
    assert loader.dataset.classes == reference.classes and loader.dataset.class_to_idx == reference.class_to_idx
    assert loader.dataset.samples == reference.samples and loader.dataset.targets == reference.targets
    shards = DALILoader(shard_dir, batch_size=4)
    assert len(shards.dataset) == 13 and shards.dataset.classes is None  # (no classes.txt beside them)


def test_mean_and_std_are_the_normalization(image_folder):
    kw = dict(batch_size=4, size=16, train=False, device="cpu")
    imagenet, _ = one_pass(DALILoader(image_folder, **kw))
    unit, _ = one_pass(DALILoader(image_folder, mean=(0, 0, 0), std=(1, 1, 1), **kw))
    assert 0 <= float(unit.min()) and float(unit.max()) <= 1  # x / 255
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(imagenet * std + mean, unit, rtol=0, atol=1e-5)
    custom, _ = one_pass(DALILoader(image_folder, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), **kw))
    torch.testing.assert_close(custom, (unit - 0.5) / torch.tensor([0.25, 0.5, 1.0])[:, None, None],
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="mean must be 3 numbers"):
        DALILoader(image_folder, batch_size=4, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="std must be positive"):
        DALILoader(image_folder, batch_size=4, std=(1, 0, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_images(image_folder, dtype):
    kw = dict(batch_size=4, size=16, train=False, device="cpu")
    full, labels = one_pass(DALILoader(image_folder, **kw))
    half, half_labels = one_pass(DALILoader(image_folder, dtype=dtype, **kw))
    assert half.dtype == dtype and torch.equal(labels, half_labels)
    torch.testing.assert_close(half.float(), full, rtol=0, atol=float(full.abs().max()) * 2 ** -8)


@pytest.mark.parametrize("train", [False, True])
def test_channels_last_batches_hold_the_same_images(image_folder, train):
    kw = dict(batch_size=4, size=(16, 12), train=train, device="cpu", seed=3)
    nchw, labels = one_pass(DALILoader(image_folder, **kw))
    loader = DALILoader(image_folder, memory_format=torch.channels_last, dtype=torch.bfloat16, **kw)
    batches = list(loader)
    for images, _ in batches:
        assert images.shape[1:] == (3, 16, 12) and images.is_contiguous(memory_format=torch.channels_last)
    nhwc, nhwc_labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert torch.equal(labels, nhwc_labels)
    torch.testing.assert_close(nhwc.float(), nchw, rtol=0, atol=float(nchw.abs().max()) * 2 ** -8)
    with pytest.raises(ValueError, match="memory_format must be"):
        DALILoader(image_folder, batch_size=4, memory_format=torch.preserve_format)


def test_whole_image_decoding_is_the_same_transform(image_folder, shard_dir):
    """``roi_decode=False`` decodes whole images and crops after: evaluation gives the same pixels
    (within one level of the resize's rounding); training the same random-resized-crop (other draws),
    reproducible and resumable; a state of one form does not resume the other."""
    level = 1 / 255 / min(IMAGENET_STD) + 1e-6  # one uint8 level, normalized
    for source in (image_folder, shard_dir):
        kw = dict(batch_size=4, size=(16, 12), train=False, device="cpu")
        window, labels = one_pass(DALILoader(source, **kw))
        whole, whole_labels = one_pass(DALILoader(source, roi_decode=False, **kw))
        assert torch.equal(labels, whole_labels)
        torch.testing.assert_close(whole, window, rtol=0, atol=level)

    def make():
        return DALILoader(image_folder, batch_size=4, size=(16, 12), train=True, seed=4, device="cpu", roi_decode=False)

    first, again = one_pass(make())[0], one_pass(make())[0]
    assert first.shape == (11, 3, 16, 12) and torch.equal(first, again)  # (seed, epoch) decide the crops
    loader = make()
    it = iter(loader)
    head = next(it)[0]
    state = loader.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    torch.testing.assert_close(torch.cat([head, *[x for x, _ in resumed]]), first, rtol=0, atol=0)
    with pytest.raises(ValueError, match="roi_decode=False, this loader has roi_decode=True"):
        DALILoader(image_folder, batch_size=4, size=(16, 12), train=True, seed=4, device="cpu").load_state_dict(state)
    with pytest.raises(ValueError, match="roi_decode must be True, False or None"):
        DALILoader(image_folder, batch_size=4, roi_decode="no")


def test_real_mask_counts_each_sample_once_across_ranks(image_folder):
    """11 samples over 3 ranks: 4 + 4 + 3, the third rank padded by one row; the mask counts 11."""
    counted = 0
    for rank in range(3):
        loader = DALILoader(image_folder, batch_size=2, size=8, train=False, shard_id=rank, num_shards=3,
                            memory_format=torch.channels_last)
        for images, labels in loader:
            mask = real_mask(labels)
            assert torch.equal(mask, labels != PAD_LABEL) and images.shape[0] == labels.shape[0]
            counted += int(mask.sum())
        assert len(loader) == 2
    assert counted == 11


@pytest.mark.needs_cuda
def test_channels_last_bfloat16_batches_on_the_gpu(image_folder):
    kw = dict(batch_size=4, size=16, train=False, device="cuda")
    reference, labels = one_pass(DALILoader(image_folder, **kw))
    loader = DALILoader(image_folder, memory_format=torch.channels_last, dtype=torch.bfloat16, **kw)
    images, got = one_pass(loader)
    assert images.is_cuda and images.dtype == torch.bfloat16 and torch.equal(got, labels)
    assert next(iter(loader))[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(images.float(), reference, rtol=0, atol=float(reference.abs().max()) * 2 ** -8)


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"random_area": (0.5,)}, "random_area must be (low, high)"),
    ({"random_area": (0.9, 0.1)}, "random_area must be (low, high)"),
    ({"random_aspect_ratio": "wide"}, "random_aspect_ratio must be (low, high)"),
    ({"max_pixels": 0}, "max_pixels must be a positive int, or None"),
    ({"max_pixels": -1}, "max_pixels must be a positive int, or None"),
    ({"max_pixels": 2.5}, "max_pixels must be a positive int, or None"),
    ({"crop_ratio": "0.9"}, "crop_ratio must be a number in (0, 1]"),
    ({"crop_ratio": 1.5}, "crop_ratio must be a number in (0, 1]"),
    ({"seed": 1.5}, "seed must be an int"),
    ({"size": (3, 4, 5)}, "size must be an int or a (height, width) pair"),
    ({"size": 0}, "size must be positive"),
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"num_threads": 0}, "num_threads must be a positive int"),
    ({"prefetch_queue_depth": 0}, "prefetch_queue_depth must be a positive int"),
    ({"on_error": "ignore"}, "on_error must be 'raise' or 'skip'"),
    ({"dtype": torch.int8}, "dtype must be"),
    ({"device": "tpu"}, "device must be None, 'cpu', 'cuda' or 'cuda:N'"),
    ({"num_shards": 2, "shard_id": 2}, "shard_id must be in [0, num_shards=2)"),
])
def test_every_argument_error_is_a_value_error_that_shows_the_value(image_folder, kwargs, says):
    args = {"batch_size": 4, **kwargs}
    with pytest.raises(ValueError) as info:
        DALILoader(image_folder, **args)
    message = str(info.value)
    assert says in message
    shown = next(iter(kwargs.values())) if len(kwargs) == 1 else 2
    assert repr(shown) in message or str(shown) in message


def test_a_source_of_the_wrong_type_is_a_value_error():
    with pytest.raises(ValueError, match="source must be a path, a list of shard paths or a brace pattern, got 42"):
        DALILoader(42, batch_size=4)
