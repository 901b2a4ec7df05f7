"""Evaluation and prediction with a trained ViT; checkpoints read back into ready models."""

from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vitsam.errors import VitsamError
from vitsam.vit.config import from_dict
from vitsam.vit.data import ArrayDataset
from vitsam.vit.loaders import Normalize, eval_batches
from vitsam.vit.model import ViT


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy
    accuracy: float  # top-1, in [0, 1]
    predictions: torch.Tensor  # (N,) int64, on the CPU
    labels: torch.Tensor  # (N,) int64, on the CPU


@torch.no_grad()
def logits_of(
    model: torch.nn.Module, x: torch.Tensor, tta_flip: bool = False, tta_translate: bool = False
) -> torch.Tensor:
    """The model's (B, classes) float logits of a normalised (B, C, H, W) batch, averaged
    over test-time views: with `tta_flip` the image and its mirror; with `tta_translate`
    also the image shifted one pixel up-left and one down-right (reflection padding), each
    view with its mirror when `tta_flip`, weighted 1/2 (unshifted) and 1/4 each (shifted).
    The translate views are airbench's `infer_mirror_translate` (Jordan, "94% on CIFAR-10
    in 3.29 seconds on a single GPU", 2024).
    """
    out = _views(model, x, tta_flip)
    if tta_translate:
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        H, W = x.shape[-2:]
        up_left = _views(model, padded[..., :H, :W].contiguous(), tta_flip)
        down_right = _views(model, padded[..., 2:, 2:].contiguous(), tta_flip)
        out = 0.5 * out + 0.25 * (up_left + down_right)
    return out


def view_count(tta_flip: bool = False, tta_translate: bool = False) -> int:
    """How many forward passes `logits_of` makes per image: 1, 2 (flip), 3 (translate) or
    6 (both)."""
    return (2 if tta_flip else 1) * (3 if tta_translate else 1)


def _views(model: torch.nn.Module, x: torch.Tensor, tta_flip: bool) -> torch.Tensor:
    out = model(x).float()
    if tta_flip:
        out = (out + model(x.flip(3)).float()) / 2
    return out


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: ArrayDataset,
    normalize: Normalize,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    tta_flip: bool = False,
    batch_size: int = 0,
    tta_translate: bool = False,
) -> EvalResult:
    if batch_size <= 0:  # a CPU's caches favour smaller batches (fast preset: 1,500 img/s
        batch_size = 250 if device.type == "cpu" else 1000  # at 250, 1,000 img/s at 1,000)
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=device)
    preds = []
    with autocast(device, dtype):
        for x, y in eval_batches(data, normalize, device, batch_size):
            logits = logits_of(model, x, tta_flip, tta_translate)
            loss += F.cross_entropy(logits, y, reduction="sum")
            preds.append(logits.argmax(1))
    model.train(was_training)
    predictions = torch.cat(preds).cpu()
    acc = (predictions == data.labels).float().mean().item()
    return EvalResult(loss.item() / len(data), acc, predictions, data.labels)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(k, k) counts: row = true class, column = predicted class."""
    return torch.bincount(labels * k + predictions, minlength=k * k).view(k, k)


@dataclass
class Classifier:
    """A trained model with what it needs to read images: classes and normalisation."""

    model: ViT
    classes: list[str]
    mean: list[float]
    std: list[float]
    meta: dict  # the rest of the checkpoint: config, epoch, test accuracy

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    @property
    def channels(self) -> int:
        return self.model.cfg.channels

    def to(self, device: torch.device) -> Classifier:
        self.model.to(device)
        return self

    def batch(self, images: list, device: torch.device | None = None) -> torch.Tensor:
        """PIL images of any size and mode -> the normalised (B, C, H, W) batch the model takes."""
        import numpy as np

        device = device or next(self.model.parameters()).device
        mode = "L" if self.channels == 1 else "RGB"
        size = (self.image_size, self.image_size)
        arrays = [np.asarray(im.convert(mode).resize(size, 3), dtype=np.uint8) for im in images]
        x = torch.from_numpy(np.stack(arrays)).reshape(len(arrays), *size, self.channels)
        return Normalize(self.mean, self.std, device)(x.permute(0, 3, 1, 2).to(device))

    @torch.no_grad()
    def predict(self, images: list, top_k: int = 5, device: torch.device | None = None):
        """PIL images of any size and mode -> per image a list of (class, probability)."""
        x = self.batch(images, device)
        self.model.eval()
        probs = logits_of(self.model, x).softmax(1).cpu()
        k = min(top_k, len(self.classes))
        top = probs.topk(k, dim=1)
        return [
            [(self.classes[i], float(p)) for p, i in zip(ps.tolist(), idx.tolist())]
            for ps, idx in zip(top.values, top.indices)
        ]


def checkpoint_path(path: str | Path) -> Path:
    """A run directory means its best.pt (or last.pt); a file is taken as it is."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).exists():
                return path / name
        raise VitsamError(f"{path}: no best.pt or last.pt in this run directory: train first")
    if not path.exists():
        raise VitsamError(f"{path}: no such checkpoint file or run directory")
    return path


def read_checkpoint(path: str | Path) -> dict:
    path = checkpoint_path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise VitsamError(
            f"{path}: not a readable vitsam checkpoint ({type(e).__name__})"
        ) from None


def load_classifier(path: str | Path) -> Classifier:
    ckpt = read_checkpoint(path)
    try:
        cfg = from_dict(ckpt["config"])
        model = ViT(cfg.model)
        model.load_state_dict(ckpt["weights"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise VitsamError(f"{path}: checkpoint does not match a vitsam ViT ({e})") from None
    meta = {k: v for k, v in ckpt.items() if k not in ("weights",)}
    return Classifier(model.eval(), list(ckpt["classes"]), ckpt["mean"], ckpt["std"], meta)


@dataclass
class EvalReport:
    """A checkpoint evaluated on a dataset's test split: what `vitsam eval` prints and saves."""

    checkpoint: str
    dataset: str
    images: int
    top1: float  # in [0, 1]
    loss: float  # mean cross-entropy
    classes: list[str]
    per_class_accuracy: dict[str, float]  # recall of each class, in [0, 1]
    confusion_matrix: list[list[int]]  # [true][predicted] counts

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, out: Path) -> list[Path]:
        """out/confusion.json and out/confusion.png (written whole); returns both paths."""
        from vitsam.files import write_atomic
        from vitsam.vit.plots import plot_confusion

        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "confusion.json", out / "confusion.png"]
        write_atomic(paths[0], json.dumps(self.to_json(), indent=2) + "\n")
        cm = torch.tensor(self.confusion_matrix)
        plot_confusion(cm, self.classes, paths[1], title=f"{self.dataset}: top-1 {self.top1:.2%}")
        return paths


def evaluate_checkpoint(
    path: str | Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    precision: str | None = None,
    tta_flip: bool | None = None,
    tta_translate: bool | None = None,
) -> EvalReport:
    """Evaluate a run directory or checkpoint on the test split of `dataset` (default: the
    one it was trained on), in `precision` (default: the run's eval precision, so both
    report the same accuracy) and with `tta_flip` and `tta_translate` (default: as the run
    evaluated).

    Raises VitsamError when the dataset's classes or image shape differ from the model's.
    """
    from vitsam.devices import resolve_device, resolve_precision
    from vitsam.vit.config import eval_precision_name
    from vitsam.vit.data import load_dataset

    path = checkpoint_path(path)
    clf = load_classifier(path)
    cfg = clf.meta["config"]
    dataset = dataset or cfg["dataset"]
    _, test = load_dataset(dataset, data_dir or cfg["data_dir"], clf.image_size)
    if test.classes != clf.classes:
        raise VitsamError(
            f"{dataset}: its classes {test.classes[:5]}... differ from the model's "
            f"{clf.classes[:5]}...: evaluate on a dataset with the same classes"
        )
    if tuple(test.images.shape[1:]) != (clf.channels, clf.image_size, clf.image_size):
        raise VitsamError(
            f"{dataset}: images are {tuple(test.images.shape[1:])} but the model takes "
            f"{(clf.channels, clf.image_size, clf.image_size)}"
        )
    dev = resolve_device(device)
    clf.to(dev)
    precision = precision or eval_precision_name(
        cfg.get("eval_precision", "fp32"), cfg.get("precision", "auto")
    )
    result = evaluate(
        clf.model,
        test,
        Normalize(clf.mean, clf.std, dev),
        dev,
        resolve_precision(precision, dev),
        tta_flip=cfg.get("tta_flip", False) if tta_flip is None else tta_flip,
        tta_translate=cfg.get("tta_translate", False) if tta_translate is None else tta_translate,
    )
    cm = confusion_matrix(result.predictions, result.labels, len(clf.classes))
    per_class = (cm.diag().float() / cm.sum(1).clamp(min=1)).tolist()
    return EvalReport(
        checkpoint=str(path),
        dataset=dataset,
        images=len(test),
        top1=result.accuracy,
        loss=result.loss,
        classes=clf.classes,
        per_class_accuracy=dict(zip(clf.classes, per_class)),
        confusion_matrix=cm.tolist(),
    )
