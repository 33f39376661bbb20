"""Augmentations in the DALI graph and MixUp/CutMix on the batch: each does what it says, on generated
images, through the loader a user builds (CPU DALI)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from dali_resizer import PAD_LABEL, DALILoader, MixUpCutMix, TransformSpec, soft_target_cross_entropy

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), device="cpu", shuffle=True)  # pixels / 255


def _folder(root, images):
    """``images``: class -> list of HWC uint8 arrays, saved as PNG (lossless)."""
    for cls, arrays in images.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k, array in enumerate(arrays):
            Image.fromarray(array).save(root / cls / f"{k}.png")
    return root


def test_the_erased_rectangle_keeps_to_its_scale_and_ratio_bounds(tmp_path):
    """White images, erased to 0: each black rectangle's area share is within ``erase_scale`` and its
    aspect ratio within ``erase_ratio`` (up to the rounding of its sides); at p=0.5 some are erased and
    some are not."""
    white = np.full((48, 48, 3), 255, dtype=np.uint8)
    root = _folder(tmp_path / "white", {"a": [white] * 24, "b": [white] * 24})
    scale, ratio, size = (0.05, 0.2), (0.5, 2.0), 40
    loader = DALILoader(root, batch_size=48, size=size, random_erase=1.0, erase_scale=scale, erase_ratio=ratio, **RAW)
    (images, _), = list(loader)
    for image in images:
        black = image[0] == 0
        rows, cols = black.any(1).nonzero().view(-1), black.any(0).nonzero().view(-1)
        h, w = len(rows), len(cols)
        assert int(black.sum()) == h * w and h * w > 0  # (one rectangle)
        slack = 0.5 * (h + w) + 0.25  # (each side rounded to a whole pixel)
        assert scale[0] * size * size - slack <= h * w <= scale[1] * size * size + slack, (h, w)
        assert ratio[0] - 0.5 / w * (1 + h / w) <= h / w <= ratio[1] + 0.5 / w * (1 + h / w) * 2, (h, w)
        assert torch.all(image[:, ~black] == 1.0)  # (the rest untouched)
    noisy = DALILoader(root, batch_size=48, size=size, random_erase=1.0, erase_scale=(0.2, 0.2), erase_value="random",
                       **RAW)
    (images, _), = list(noisy)
    for image in images:  # a rectangle of standard normal noise, a draw per pixel and channel; the rest white
        noise = image[:, (image != 1.0).any(0)]
        assert abs(noise.numel() / 3 / size**2 - 0.2) < 0.02
        assert abs(float(noise.mean())) < 0.2 and abs(float(noise.std()) - 1) < 0.15
        assert len(set(noise.view(-1).tolist())) > 0.99 * noise.numel()
    half = DALILoader(root, batch_size=48, size=size, random_erase=0.5, **RAW)
    (images, _), = list(half)
    erased = int(sum(bool((image == 0).any()) for image in images))
    assert 0 < erased < 48


def _uniform_histogram_images(count, side=64, seed=0):
    """Images whose every channel holds each value 0..255 the same number of times, at random places:
    Equalize and AutoContrast leave them as they are, so a policy of magnitude 0 must too."""
    rng = np.random.default_rng(seed)
    values = np.repeat(np.arange(256, dtype=np.uint8), side * side // 256)
    return [np.stack([rng.permutation(values).reshape(side, side) for _ in range(3)], axis=-1) for _ in range(count)]


def _as_delivered(array):
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("policy", ["ra", "ta_wide"])
def test_a_magnitude_of_zero_leaves_the_images_and_a_high_one_changes_them(tmp_path, policy):
    """RandAugment at magnitude 0: every operation of the policy is the identity on these images, which
    come out as they went in (or mirrored, by the flip); at the top magnitude nearly every one changes.
    TrivialAugmentWide with one magnitude bin (its lowest magnitude): DALI's suite starts brightness,
    contrast, colour and sharpness at 0.01, not 0, so each image is within 1% (+ rounding) of its
    original; with 31 bins most change."""
    originals = _uniform_histogram_images(16)
    root = _folder(tmp_path / "u", {"a": originals[:8], "b": originals[8:]})
    crop = dict(random_area=(1.0, 1.0), random_aspect_ratio=(1.0, 1.0))  # (the whole image, at its size)
    expected = [_as_delivered(a) for a in originals]

    def distance(image):  # to the nearest original, as it is or mirrored
        return min(float((image - f).abs().max()) for e in expected for f in (e, e.flip(-1)))

    low = dict(ra_magnitude=0) if policy == "ra" else dict(augment_bins=1)
    high = dict(ra_magnitude=30) if policy == "ra" else {}
    (images, _), = list(DALILoader(root, batch_size=16, size=64, auto_augment=policy, **crop, **low, **RAW))
    bound = 1e-6 if policy == "ra" else 0.01 + 1.5 / 255
    assert max(distance(image) for image in images) <= bound
    (images, _), = list(DALILoader(root, batch_size=16, size=64, auto_augment=policy, **crop, **high, **RAW))
    changed = sum(distance(image) > 0.05 for image in images)
    assert changed >= 12 if policy == "ra" else changed >= 8  # (TrivialAugment draws Identity 1 time in 14)


def _every_augmentation(root, augment="ra", **kw):
    return DALILoader(root, batch_size=4, size=24, return_index=True, auto_augment=augment, hflip=0.3,
                      color_jitter=(0.4, 0.4, 0.4, 0.1), random_erase=0.5, erase_value="random", seed=7,
                      **{**RAW, **kw})


def test_augmented_epochs_repeat_from_seed_and_epoch_and_resume_exactly(image_folder):
    loader = _every_augmentation(image_folder)
    loader.set_epoch(1)
    whole = list(loader)
    again = _every_augmentation(image_folder)
    again.set_epoch(1)
    for (x, y, i), (x2, y2, i2) in zip(whole, again, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(i, i2)
    other = _every_augmentation(image_folder)
    other.set_epoch(2)
    assert not all(torch.equal(x, x2) for (x, *_), (x2, *_) in zip(whole, other))
    stopped = _every_augmentation(image_folder)
    stopped.set_epoch(1)
    it = iter(stopped)
    head = [next(it), next(it)]
    state = stopped.state_dict()
    resumed = _every_augmentation(image_folder)
    resumed.load_state_dict(state)
    for (x, y, i), (x2, y2, i2) in zip(whole, head + list(resumed), strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(i, i2)


def test_a_state_saved_without_the_augmentations_is_refused_mid_epoch(image_folder):
    plain = _every_augmentation(image_folder, augment=None)
    it = iter(plain)
    next(it)
    with pytest.raises(ValueError, match="auto_augment=None, this loader has auto_augment='ra'"):
        _every_augmentation(image_folder).load_state_dict(plain.state_dict())


def test_the_spec_is_the_loaders_one_description_of_the_graph(image_folder):
    loader = _every_augmentation(image_folder, interpolation="bicubic")
    assert loader.spec == TransformSpec((24, 24), True, interpolation="bicubic", hflip=0.3, auto_augment="ra",
                                        augment_interpolation="bilinear", color_jitter=(0.4, 0.4, 0.4, 0.1),
                                        random_erase=0.5, erase_value="random", mean=(0.0, 0.0, 0.0),
                                        std=(1.0, 1.0, 1.0))
    with pytest.raises(AttributeError):
        loader.spec.size = (8, 8)  # (frozen)
    for bad, match in ((dict(auto_augment="rand-m9"), "auto_augment must be"),
                       (dict(auto_augment="ra", ra_magnitude=31), "ra_magnitude must be"),
                       (dict(random_erase=1.5), "random_erase must be"),
                       (dict(color_jitter=(0.4, 0.4, 0.4, 0.6)), "color_jitter must be"),
                       (dict(interpolation="area"), "interpolation must be"),
                       (dict(auto_augment="ta_wide", augment_interpolation="bicubic"), "augment_interpolation must"),
                       (dict(random_erase=0.5, erase_value="noise"), "erase_value must be")):
        with pytest.raises(ValueError, match=match):
            DALILoader(image_folder, batch_size=2, size=8, **bad)


# -- MixUp / CutMix -------------------------------------------------------------------------------------

def _constant_batch(labels):
    """Row k is filled with the value 10 + its label (so a pixel says which rows it came from)."""
    labels = torch.tensor(labels)
    images = (10.0 + labels.clamp(min=0)).view(-1, 1, 1, 1).expand(-1, 3, 16, 20).clone()
    return images, labels


def test_mixup_targets_sum_to_one_and_weigh_the_classes_as_the_pixels_do():
    images, labels = _constant_batch([0, 1, 2, 3, 4, PAD_LABEL])
    images[5] = -7.0  # (a padding row's pixels: never mixed into a real row)
    mix = MixUpCutMix(num_classes=5, mixup_alpha=0.4, seed=1)
    for _ in range(5):
        out, targets = mix(images, labels)
        assert mix.last["kind"] == "mixup" and 0 < mix.last["lam"] < 1
        assert torch.allclose(targets[:5].sum(1), torch.ones(5)) and torch.equal(targets[5], torch.zeros(5))
        value = targets[:5] @ (10.0 + torch.arange(5.0))  # the pixel value the targets' weights give
        assert torch.allclose(out[:5, :, 0, 0], value.view(-1, 1).expand(5, 3), atol=1e-5)
        assert torch.equal(out[5], images[5])


def test_cutmix_weighs_each_label_by_the_pasted_area():
    images, labels = _constant_batch([3, 1, PAD_LABEL, 0, 2])
    images[2] = -7.0
    mix = MixUpCutMix(num_classes=4, cutmix_alpha=1.0, seed=2)
    pasted_some = False
    for _ in range(6):
        out, targets = mix(images, labels)
        assert mix.last["kind"] == "cutmix"
        for row in (0, 1, 3, 4):
            own = float((out[row, 0] == images[row, 0, 0, 0]).float().mean())
            assert math.isclose(float(targets[row, labels[row]]), own, abs_tol=1e-6)
            assert math.isclose(float(targets[row].sum()), 1.0, abs_tol=1e-6)
            pasted_some |= own < 1
        assert torch.equal(out[2], images[2]) and not bool((out[[0, 1, 3, 4]] == images[2, 0, 0, 0]).any())
    assert pasted_some


def test_mixing_resumes_from_its_state_and_the_loss_leaves_padding_out():
    images, labels = _constant_batch([0, 1, 2, PAD_LABEL])
    mix = MixUpCutMix(num_classes=3, mixup_alpha=0.2, cutmix_alpha=1.0, seed=3)
    mix(images, labels)
    state = mix.state_dict()
    after = [mix(images, labels) for _ in range(4)]
    again = MixUpCutMix(num_classes=3, mixup_alpha=0.2, cutmix_alpha=1.0, seed=99)
    again.load_state_dict(state)
    for (x, t), (x2, t2) in zip(after, [again(images, labels) for _ in range(4)]):
        assert torch.equal(x, x2) and torch.equal(t, t2)
    logits = torch.randn(4, 3)
    _, targets = MixUpCutMix(num_classes=3)(images, labels)  # (no mixing: one-hot, padding zero)
    assert torch.allclose(soft_target_cross_entropy(logits, targets),
                          torch.nn.functional.cross_entropy(logits, labels, ignore_index=PAD_LABEL))


# -- a torchvision training transform, translated -----------------------------------------------------------


def _reference_train_preset(T, *, policy, interpolation, hflip, jitter, erase):
    """torchvision's reference ``ClassificationPresetTrain`` (``references/classification/presets.py``),
    v2, as its flags build it; with a ColorJitter, as timm's transform has one."""
    steps = [T.RandomResizedCrop(24, interpolation=interpolation, antialias=True), T.RandomHorizontalFlip(hflip),
             policy, T.ColorJitter(*jitter), T.PILToTensor(), T.ToDtype(torch.float, scale=True),
             T.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)), T.RandomErasing(**erase),
             T.ToPureTensor()]
    return T.Compose(steps)


def test_a_recipe_transform_runs_as_the_same_settings_given_by_hand(image_folder):
    """The reference script's training preset with ``--auto-augment ra --ra-magnitude 5 --random-erase 0.25
    --interpolation bicubic``, a colour jitter and a flip at 0.3, on an ``ImageFolder``: the loader builds
    the graph those settings give by hand, and delivers the same batches."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2 as T

    mode = T.InterpolationMode.BICUBIC
    transform = _reference_train_preset(T, policy=T.RandAugment(magnitude=5, interpolation=mode),
                                        interpolation=mode, hflip=0.3, jitter=(0.3, 0.2, 0.1, 0.05),
                                        erase=dict(p=0.25, value="random"))
    with pytest.warns(UserWarning, match="interpolate bilinearly, not bicubically"):
        loader = DALILoader(ImageFolder(str(image_folder), transform=transform), batch_size=4, shuffle=True, seed=3)
    by_hand = DALILoader(image_folder, batch_size=4, shuffle=True, seed=3, size=24, interpolation="bicubic",
                         hflip=0.3, auto_augment="ra", ra_magnitude=5, color_jitter=(0.3, 0.2, 0.1, 0.05),
                         random_erase=0.25, erase_value="random")
    assert loader.spec == by_hand.spec and loader.spec.augment_interpolation == "bilinear"
    for (x, y), (a, b) in zip(loader, by_hand, strict=True):
        assert torch.equal(x, a) and torch.equal(y, b)

    plain = T.Compose([T.RandomResizedCrop(24), T.TrivialAugmentWide(), T.ToImage(), T.ToDtype(torch.float32, True)])
    spec = DALILoader(ImageFolder(str(image_folder), transform=plain), batch_size=4).spec
    assert (spec.auto_augment, spec.augment_interpolation, spec.hflip, spec.random_erase) == (
        "ta_wide", "nearest", 0, 0)


def test_an_argument_the_transform_sets_otherwise_is_refused(image_folder):
    """A loader argument that disagrees with the dataset's transform is refused rather than overridden;
    one that agrees, or is left at its default, is accepted."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2 as T

    dataset = ImageFolder(str(image_folder), transform=T.Compose(
        [T.RandomResizedCrop(16), T.RandomHorizontalFlip(), T.TrivialAugmentWide(), T.ToImage(),
         T.ToDtype(torch.float32, True)]))
    with pytest.raises(ValueError, match="auto_augment='ra', but the dataset's transform sets auto_augment='ta_wide'"):
        DALILoader(dataset, batch_size=4, auto_augment="ra")
    with pytest.raises(ValueError, match="size=24, but the dataset's transform sets size=.16, 16."):
        DALILoader(dataset, batch_size=4, size=24)
    assert DALILoader(dataset, batch_size=4, size=16, auto_augment="ta_wide").spec.auto_augment == "ta_wide"


def test_colour_jitters_contrast_blends_with_each_images_mean_gray(tmp_path):
    """As torchvision's ``adjust_contrast``: an image of one gray keeps it whatever the factor (the blend
    is with its own mean gray, not a fixed 128); a low-contrast colour image keeps its mean gray, and
    every channel's deviation from it scales by one factor within ``[1 - c, 1 + c]``."""
    rng = np.random.default_rng(0)
    flat = [np.full((24, 24, 3), gray, dtype=np.uint8) for gray in (30, 200, 250)]
    soft = [rng.integers(100, 141, (24, 24, 3), dtype=np.uint8) for _ in range(5)]
    root = _folder(tmp_path / "c", {"flat": flat, "soft": soft})
    loader = DALILoader(root, batch_size=8, size=24, color_jitter=(0.0, 0.5, 0.0, 0.0), hflip=0.0,
                        random_area=(1.0, 1.0), random_aspect_ratio=(1.0, 1.0), **RAW)
    (images, labels), = list(loader)
    originals = [_as_delivered(a) for a in flat]
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    factors = []
    for image, label in zip(images, labels):
        if loader.classes[label] == "flat":
            assert any(torch.allclose(image, o, rtol=0, atol=1e-6) for o in originals)  # (unchanged, in uint8)
            continue
        fits = []
        for source in map(_as_delivered, soft):  # (which one it was: the best fit)
            gray = float((source * luma).sum(0).mean())
            deviation, out = source - gray, image - gray
            factor = float((out * deviation).sum() / (deviation * deviation).sum())
            fits.append((float((out - factor * deviation).abs().max()), factor, deviation, out))
        _, factor, deviation, out = min(fits, key=lambda fit: fit[0])
        assert 0.5 - 0.01 <= factor <= 1.5 + 0.01
        assert torch.allclose(out, factor * deviation, atol=0.6 / 255)  # (each pixel rounded to uint8)
        factors.append(factor)
    assert len(factors) == 5 and max(factors) - min(factors) > 0.05  # (a factor drawn per image)


def _best_hue_shift(source, image, bound):
    """The shift (in turns, within ``bound``) at which torchvision's ``adjust_hue`` of ``source`` is
    nearest ``image``, and that distance (max over pixels, in uint8 levels)."""
    from torchvision.transforms.functional import adjust_hue

    source = torch.from_numpy(source).permute(2, 0, 1)
    target = (image * 255).round().to(torch.int32)
    distance = lambda s: (adjust_hue(source, float(s)).to(torch.int32) - target).abs()  # noqa: E731
    mean = lambda s: float(distance(s).float().mean())  # noqa: E731
    shift = min(np.linspace(-bound, bound, 81), key=mean)
    shift = min(np.linspace(shift - bound / 40, shift + bound / 40, 201), key=mean)
    return float(shift), int(distance(shift).max())


def test_colour_jitters_hue_is_torchvisions_hsv_shift(tmp_path):
    """Hue jitter alone: each image is torchvision's ``adjust_hue`` of its source by a shift drawn in
    ``[-hue, hue]`` (found by search), to within one uint8 level: the HSV shift, not DALI's YIQ rotation,
    whose colours differ by tens of levels."""
    rng = np.random.default_rng(1)
    sources = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(6)]
    root = _folder(tmp_path / "h", {"a": sources[:3], "b": sources[3:]})
    loader = DALILoader(root, batch_size=6, size=16, color_jitter=(0.0, 0.0, 0.0, 0.2), hflip=0.0,
                        random_area=(1.0, 1.0), random_aspect_ratio=(1.0, 1.0), **RAW)
    (images, _), = list(loader)
    shifts = []
    for image in images:  # (its source: the one of the same HSV value, max(R, G, B), which a hue shift keeps)
        value = (image * 255).round().amax(0).numpy()
        source = min(sources, key=lambda s: np.abs(s.max(-1).astype(int) - value).max())
        shift, distance = _best_hue_shift(source, image, 0.2)
        assert distance <= 1 and abs(shift) <= 0.2, (shift, distance)
        shifts.append(shift)
    assert max(shifts) - min(shifts) > 0.02  # (a shift drawn per image)
