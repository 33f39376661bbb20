"""A classification training script written the way torchvision's reference script
(``references/classification/train.py``) is written: ``ImageFolder`` data sets with preset-like
transforms, ``DistributedSampler``s, ``collate_fn=default_collate``, ``train_sampler.set_epoch(epoch)``,
``CrossEntropyLoss``, an evaluation pass per epoch. ``--loader dali`` swaps one name,
``torch.utils.data.DataLoader`` for ``dali_resizer.DALILoader``; nothing else changes.

Run by tests/test_clients.py under ``torchrun --nproc_per_node=2`` (gloo, CPU). ``--record FILE``: rank 0
writes what each rank's steps saw (labels per epoch, batch counts) as JSON.
"""

import argparse
import json

import torch
import torch.distributed as dist
import torchvision
from torch import nn
from torch.utils.data import default_collate
from torch.utils.data.distributed import DistributedSampler
from torchvision import transforms as T

from dali_resizer import DALILoader


class ClassificationPresetTrain:
    def __init__(self, *, crop_size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 interpolation=T.InterpolationMode.BILINEAR, hflip_prob=0.5, auto_augment_policy=None,
                 ra_magnitude=9, random_erase_prob=0.0):
        trans = [T.RandomResizedCrop(crop_size, interpolation=interpolation, antialias=True)]
        if hflip_prob > 0:
            trans.append(T.RandomHorizontalFlip(hflip_prob))
        if auto_augment_policy == "ra":
            trans.append(T.RandAugment(interpolation=interpolation, magnitude=ra_magnitude))
        elif auto_augment_policy == "ta_wide":
            trans.append(T.TrivialAugmentWide(interpolation=interpolation))
        elif auto_augment_policy is not None:
            trans.append(T.AutoAugment(policy=T.AutoAugmentPolicy(auto_augment_policy), interpolation=interpolation))
        trans.extend([T.PILToTensor(), T.ConvertImageDtype(torch.float), T.Normalize(mean=mean, std=std)])
        if random_erase_prob > 0:
            trans.append(T.RandomErasing(p=random_erase_prob))
        self.transforms = T.Compose(trans)

    def __call__(self, img):
        return self.transforms(img)


class ClassificationPresetEval:
    def __init__(self, *, crop_size, resize_size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.transforms = T.Compose([T.Resize(resize_size, antialias=True), T.CenterCrop(crop_size), T.PILToTensor(),
                                     T.ConvertImageDtype(torch.float), T.Normalize(mean=mean, std=std)])

    def __call__(self, img):
        return self.transforms(img)


def load_data(traindir, valdir, args):
    interpolation = T.InterpolationMode(args.interpolation)
    dataset = torchvision.datasets.ImageFolder(traindir, ClassificationPresetTrain(
        crop_size=args.train_crop_size, interpolation=interpolation, auto_augment_policy=args.auto_augment,
        ra_magnitude=args.ra_magnitude, random_erase_prob=args.random_erase))
    dataset_test = torchvision.datasets.ImageFolder(
        valdir, ClassificationPresetEval(crop_size=args.val_crop_size, resize_size=args.val_resize_size))
    train_sampler = DistributedSampler(dataset)
    test_sampler = DistributedSampler(dataset_test, shuffle=False)
    return dataset, dataset_test, train_sampler, test_sampler


def train_one_epoch(model, criterion, optimizer, data_loader, device, epoch, seen):
    model.train()
    for image, target in data_loader:
        image, target = image.to(device), target.to(device)
        output = model(image)
        loss = criterion(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen.setdefault(epoch, []).extend(target.tolist())
        seen.setdefault(f"sums{epoch}", []).append(float(image.double().sum()))
    return float(loss)


def evaluate(model, criterion, data_loader, device):
    model.eval()
    labels = []
    with torch.inference_mode():
        for image, target in data_loader:
            image, target = image.to(device, non_blocking=True), target.to(device, non_blocking=True)
            model(image)
            labels.extend(target.tolist())
    return labels


def main(args):
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    device = torch.device(args.device)
    dataset, dataset_test, train_sampler, test_sampler = load_data(args.train_dir, args.val_dir, args)
    loader_class = DALILoader if args.loader == "dali" else torch.utils.data.DataLoader
    data_loader = loader_class(dataset, batch_size=args.batch_size, sampler=train_sampler, num_workers=args.workers,
                               pin_memory=True, collate_fn=default_collate)
    data_loader_test = loader_class(dataset_test, batch_size=args.batch_size, sampler=test_sampler,
                                    num_workers=args.workers, pin_memory=True)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, len(dataset.classes))).to(device)
    model = nn.parallel.DistributedDataParallel(model)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    seen, evaluated, losses = {}, {}, []
    for epoch in range(args.start_epoch, args.epochs):
        train_sampler.set_epoch(epoch)
        losses.append(train_one_epoch(model, criterion, optimizer, data_loader, device, epoch, seen))
        evaluated[epoch] = evaluate(model, criterion, data_loader_test, device)
    record = {"rank": dist.get_rank(), "len": len(data_loader), "len_test": len(data_loader_test), "seen": seen,
              "evaluated": evaluated, "losses": losses}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, record)
    if args.record and dist.get_rank() == 0:
        with open(args.record, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


def get_args_parser():
    parser = argparse.ArgumentParser(description="Classification training, torchvision reference style")
    parser.add_argument("--train-dir", required=True)
    parser.add_argument("--val-dir", required=True)
    parser.add_argument("--loader", default="torch", choices=["torch", "dali"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-b", "--batch-size", default=2, type=int)
    parser.add_argument("--epochs", default=2, type=int)
    parser.add_argument("--start-epoch", default=0, type=int)
    parser.add_argument("-j", "--workers", default=1, type=int)
    parser.add_argument("--lr", default=0.1, type=float)
    parser.add_argument("--momentum", default=0.9, type=float)
    parser.add_argument("--label-smoothing", default=0.1, type=float)
    parser.add_argument("--train-crop-size", default=16, type=int)
    parser.add_argument("--val-resize-size", default=20, type=int)
    parser.add_argument("--val-crop-size", default=16, type=int)
    parser.add_argument("--interpolation", default="bilinear", type=str)
    parser.add_argument("--auto-augment", default=None, type=str)
    parser.add_argument("--ra-magnitude", default=9, type=int)
    parser.add_argument("--random-erase", default=0.0, type=float)
    parser.add_argument("--record", default=None)
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
