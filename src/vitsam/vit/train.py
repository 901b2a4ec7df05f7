"""train(cfg) -> metrics: the training loop, checkpoints, resume, metrics and curves."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitsam.devices import choose_precision, resolve_device, seed_everything
from vitsam.errors import VitsamError
from vitsam.files import replacing, write_atomic
from vitsam.vit import augment, distributed
from vitsam.vit.analysis import describe_flops
from vitsam.vit.budget import TimeBudget
from vitsam.vit.config import TrainConfig, eval_precision_name, from_dict, to_dict, to_json
from vitsam.vit.data import TORCHVISION, ArrayDataset, load_dataset
from vitsam.vit.evaluate import autocast, evaluate, read_checkpoint, view_count
from vitsam.vit.loaders import DeviceLoader, Normalize, TextbookLoader, fits_on_device
from vitsam.vit.model import WHITEN_IMAGES, ViT, count_parameters, whiten_init_
from vitsam.vit.optim import MuonAdamW, muon_split
from vitsam.vit.plots import plot_curves

log = logging.getLogger("vitsam")


VAL_SEED = 0  # the validation split's seed: the same images for every --seed and recipe


@dataclass
class Data:
    train: ArrayDataset
    test: ArrayDataset
    mean: list[float]
    std: list[float]
    val: ArrayDataset | None = None  # held out of the training set (--val-split)


def prepare_data(cfg: TrainConfig, loaded: tuple[ArrayDataset, ArrayDataset] | None = None) -> Data:
    """Load the dataset (or take `loaded`, its (train, test) already in memory), hold out
    the validation split, apply the subsets and fit the model config to it (channels, size,
    classes). The validation split is drawn first, with VAL_SEED, so it is the same images
    whatever the run's seed and subset; it never overlaps the training images."""
    train, test = loaded or load_dataset(cfg.dataset, cfg.data_dir, cfg.model.image_size)
    val = None
    if cfg.val_split:
        train, val = train.split(cfg.val_split, seed=VAL_SEED)
    train = train.subset(cfg.train_subset, seed=cfg.seed)
    test = test.subset(cfg.test_subset, seed=cfg.seed)
    if cfg.dataset in TORCHVISION or cfg.dataset == "shapes":
        cfg.model.channels = train.images.shape[1]
        cfg.model.image_size = train.images.shape[-1]
    cfg.model.num_classes = len(train.classes)
    cfg.model.__post_init__()  # the data may make the patch size not fit
    mean, std = train.mean_std()
    return Data(train, test, mean, std, val)


def lr_factor(
    step: int,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float,
    schedule: str = "warmup-cosine",
) -> float:
    """The learning rate of `step` (0-based) as a share of the peak.

    Linear warmup from ~0 to 1 over `warmup_steps`, then to `min_ratio` at `total_steps`:
    half a cosine (Loshchilov & Hutter, SGDR, 2017), a straight line, or held constant.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    if schedule == "warmup-constant":
        return 1.0
    decay = 1 - t if schedule == "warmup-linear" else 0.5 * (1 + math.cos(math.pi * t))
    return min_ratio + (1 - min_ratio) * decay


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save whole or not at all (vitsam.files: a crash never leaves half a file)."""
    with replacing(path) as tmp:
        torch.save(obj, tmp)


class Trainer:
    """Holds one run's state; `run()` trains to cfg.epochs (cfg.max_steps, when set, cuts
    the last one short), resuming where it stopped."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: Data | None = None,
        progress: bool = False,
        started: float | None = None,
    ):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.progress = progress
        # a time budget and wall_seconds count from here (time.perf_counter), data loading
        # included: now, or the process's start when the command line gives it
        self.started = time.perf_counter() if started is None else started
        seed_everything(cfg.seed)
        self.dist, self.device = distributed.setup(resolve_device(cfg.device))
        distributed.local_batch(cfg.batch_size, self.dist)  # the global batch must split
        precision = choose_precision(cfg.precision, self.device)
        if self.dist.is_main:  # the run's first line: what was chosen and why
            log.info("precision %s", precision)
        self.dtype = precision.dtype
        evaluation = eval_precision_name(cfg.eval_precision, cfg.precision)
        self.eval_dtype = choose_precision(evaluation, self.device).dtype
        self.data = data or prepare_data(cfg)
        # what each epoch is evaluated on (and best.pt chosen by): the validation split when
        # there is one, the test set then evaluated once, after the last epoch
        self.eval_name = "val" if self.data.val is not None else "test"
        self.eval_data = self.data.val if self.data.val is not None else self.data.test
        self.normalize = Normalize(self.data.mean, self.data.std, self.device)
        self.model = ViT(cfg.model).to(self.device)
        if cfg.model.stem_init == "whiten":  # from the data, so here and not in ViT()
            images = self.data.train.images[:WHITEN_IMAGES].to(self.device)
            whiten_init_(self.model.patch_embed.stem, self.normalize(images))
        attn = cfg.model.attn_impl
        if attn == "auto":  # the CPU's fused-attention backward is slow at these sizes
            attn = "plain" if self.device.type == "cpu" else "sdpa"
        self.model.set_attention(attn)
        self.ema = copy.deepcopy(self.model).eval() if cfg.ema > 0 else None
        net = distributed.wrap(self.model, self.dist, self.device)
        self.forward = torch.compile(net) if cfg.compile else net
        self.opt = self._optimizer()
        self.steps_per_epoch = len(self.data.train) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise VitsamError(
                f"batch size {cfg.batch_size} is larger than the {len(self.data.train)} "
                "training images: lower --batch-size"
            )
        if cfg.max_steps:  # the steps decide the epochs: the last one may be partial
            cfg.epochs = self._epochs_of(cfg.max_steps)
        self._cap_warmup()
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.beta_rng = np.random.default_rng(cfg.seed)
        # data-parallel ranks share `gen` for the order and augment from their own stream
        self.aug_gen = torch.Generator(self.device) if self.dist.enabled else self.gen
        self.loader = self._loader()
        self.epoch = 0  # epochs finished
        self.best_acc = 0.0
        self.history: list[dict] = []
        self.wall_before = 0.0  # wall seconds of the run before a resume
        self.budget = TimeBudget(
            cfg.time_budget,
            steps_per_epoch=self.steps_per_epoch,
            test_images=len(self.eval_data),
            final_images=len(self.data.test) if self.data.val is not None else 0,
            final_tta=self._views(True) != self._views(False),
            started=self.started,
            dist=self.dist,
            device=self.device,
        )

    def _cap_warmup(self) -> None:
        cfg = self.cfg
        run_epochs = self.total_steps() / self.steps_per_epoch
        if cfg.warmup_epochs >= run_epochs:
            capped = run_epochs / 5
            log.warning(
                "warmup of %g epochs is not shorter than the %g-epoch run: capped to %g "
                "(a fifth of the run); set --warmup-epochs to choose",
                cfg.warmup_epochs,
                run_epochs,
                capped,
            )
            cfg.warmup_epochs = capped

    def _time_eval(self, n: int, last: bool = False) -> tuple[float, int]:
        """Seconds to evaluate n images of the evaluation set (all, when fewer) as every
        epoch does, or as the last does when `last`, and how many: for the budget."""
        part = self.eval_data.subset(min(len(self.eval_data), n), seed=self.cfg.seed)
        t = time.perf_counter()
        self._evaluate(part, last)
        return time.perf_counter() - t, len(part)

    def _wall_seconds(self) -> float:
        """The run's wall seconds so far, resumed parts included (metrics' `wall_seconds`)."""
        return round(self.wall_before + time.perf_counter() - self.started, 1)

    def _evaluate(self, data: ArrayDataset, last: bool = False):
        """Evaluate `data` as an epoch's evaluation does (the last one's when `last`)."""
        flip, translate = self._tta(last)
        return evaluate(
            self.eval_model(),
            data,
            self.normalize,
            self.device,
            self.eval_dtype,
            flip,
            tta_translate=translate,
        )

    def _tta(self, last: bool) -> tuple[bool, bool]:
        """(flip, translate) test-time augmentation of an epoch's evaluation: the run's, or
        with cfg.tta_at_end none but in the last one (`last`)."""
        on = last or not self.cfg.tta_at_end
        return self.cfg.tta_flip and on, self.cfg.tta_translate and on

    def _views(self, last: bool) -> int:
        """Forward passes per image of an epoch's evaluation (the last one's when `last`)."""
        return view_count(*self._tta(last))

    def total_steps(self) -> int:
        """The run's length in training steps: cfg.max_steps, else whole epochs."""
        return self.cfg.max_steps or self.steps_per_epoch * self.cfg.epochs

    def _epochs_of(self, steps: int) -> int:
        """Epochs that `steps` training steps span, the last one partial."""
        return math.ceil(steps / self.steps_per_epoch)

    def _set_steps(self, steps: int) -> None:
        """The run's new length (the time budget's) in steps, the last epoch partial: kept
        in cfg and RUN/config.json."""
        self.cfg.max_steps = steps
        self.cfg.epochs = self._epochs_of(steps)
        if self.dist.is_main:
            self._write_config()

    def _write_config(self) -> None:
        """RUN/config.json: the run's config as it stands (a time budget fixes its epochs)."""
        write_atomic(self.out / "config.json", to_json(self.cfg) + "\n")

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        fused = self.device.type in ("cuda", "cpu")  # one kernel for the whole update
        if cfg.optimizer == "muon":
            muon, rest = muon_split(self.model)
            ns = torch.bfloat16 if self.dtype == torch.bfloat16 else torch.float32
            return MuonAdamW(
                muon, rest, cfg.lr, cfg.betas, cfg.weight_decay, fused=fused, ns_dtype=ns
            )
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(
                self.model.parameters(),
                cfg.lr,
                momentum=cfg.betas[0],
                nesterov=True,
                weight_decay=cfg.weight_decay,
                fused=fused,
            )
        return torch.optim.AdamW(
            self.model.parameters(),
            cfg.lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
            fused=fused,
        )

    def lr_factor(self, step: int) -> float:
        """The schedule for the run's length (read at every step, so a run extended or
        refitted follows its new length from the next step)."""
        cfg = self.cfg
        ratio = cfg.min_lr / cfg.lr if cfg.lr else 0.0
        total = self.total_steps()
        return lr_factor(step, self.warmup_steps(), total, ratio, cfg.schedule)

    def warmup_steps(self) -> int:
        """Steps of linear warmup: cfg.warmup_epochs of this run's epochs, at least one."""
        return max(1, round(self.steps_per_epoch * self.cfg.warmup_epochs))

    def _loader(self):
        kind, d = self.cfg.loader, self.dist
        if kind == "auto":
            kind = "device" if fits_on_device(self.data.train, self.device) else "dataloader"
        if kind == "device":
            return DeviceLoader(
                self.data.train,
                self.cfg,
                self.normalize,
                self.device,
                self.gen,
                rank=d.rank,
                world=d.world,
                aug_gen=self.aug_gen,
            )
        if kind == "dataloader":
            if self.cfg.alternate_flip:
                raise VitsamError(
                    "--alternate-flip needs the device loader (--loader device): the "
                    "dataloader's per-image transforms toss a coin per flip"
                )
            return TextbookLoader(
                self.data.train,
                self.cfg,
                self.data.mean,
                self.data.std,
                self.device,
                self.cfg.seed,
                d.rank,
                d.world,
            )
        raise VitsamError(f"unknown loader {kind!r}: choose auto, device or dataloader")

    # --- checkpoints -------------------------------------------------------------------

    def _meta(self) -> dict:
        d = self.data
        return {
            "config": to_dict(self.cfg),
            "classes": d.train.classes,
            "mean": d.mean,
            "std": d.std,
        }

    def eval_model(self) -> ViT:
        return self.ema if self.ema is not None else self.model

    def weights_checkpoint(self, **extra) -> dict:
        """What eval/predict need: the evaluated weights, config, classes, normalisation."""
        return {
            **self._meta(),
            "weights": self.eval_model().state_dict(),
            "epoch": self.epoch,
            **extra,
        }

    def state(self) -> dict:
        """Everything to resume exactly; `weights` doubles as the EMA's state when EMA is on."""
        s = {
            **self.weights_checkpoint(),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_acc": self.best_acc,
            "history": self.history,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "gen": self.gen.get_state(),
                "gen_device": self.gen.device.type,
                "beta": json.dumps(self.beta_rng.bit_generator.state),
            },
        }
        return s

    def load_state(self, s: dict) -> None:
        """Restore a `state()`; the schedule follows this run's cfg.epochs from here on."""
        self.model.load_state_dict(s["model"])
        if self.ema is not None:
            self.ema.load_state_dict(s["weights"])
        self.opt.load_state_dict(s["optimizer"])
        self.sched.load_state_dict(s["scheduler"])
        # the optimizer holds the last learning rate of the saved schedule (0.0 at the end of
        # a finished cosine): set the one this run's schedule gives the next step
        for group, base in zip(self.opt.param_groups, self.sched.base_lrs):
            group["lr"] = base * self.lr_factor(self.sched.last_epoch)
        self.scaler.load_state_dict(s["scaler"])
        self.epoch, self.best_acc, self.history = s["epoch"], s["best_acc"], list(s["history"])
        if self.history:
            self.wall_before = self.history[-1].get("wall_seconds", 0.0)
        rng = s["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        saved_on = rng.get("gen_device", self.gen.device.type)
        try:
            if saved_on != self.gen.device.type:
                raise RuntimeError(f"generator state of a {saved_on} generator")
            self.gen.set_state(rng["gen"])
        except RuntimeError:
            # another device's generator (a CUDA run resumed on a CPU): the data order and
            # augmentation from here on are reseeded, not those of the original machine
            log.warning(
                "the checkpoint's data-order generator is a %s one, this run's is %s: "
                "reseeded from (seed, epoch), so later batches differ from the original run",
                saved_on,
                self.gen.device.type,
            )
            self.gen.manual_seed(self.cfg.seed * 100_003 + self.epoch)
        self.beta_rng.bit_generator.state = json.loads(rng["beta"])

    # --- one epoch ---------------------------------------------------------------------

    def _update_ema(self, step: int) -> None:
        decay = min(self.cfg.ema, (1 + step) / (10 + step))  # short runs: warm the EMA up
        with torch.no_grad():
            e, m = list(self.ema.parameters()), list(self.model.parameters())
            torch._foreach_lerp_(e, m, 1 - decay)
            for eb, mb in zip(self.ema.buffers(), self.model.buffers()):
                eb.copy_(mb)  # BatchNorm statistics (conv tokenizer): the model's own

    def train_epoch(self) -> tuple[float, float, int]:
        cfg, model = self.cfg, self.model
        mixing = self.epoch < cfg.epochs - cfg.mix_off_epochs
        k = cfg.model.num_classes
        model.train()
        self.loader.set_epoch(self.epoch)
        if self.dist.enabled:
            self.beta_rng = distributed.seed_rank(self.dist, cfg.seed, self.epoch, self.aug_gen)
        loss_sum = torch.zeros((), device=self.device)  # metrics stay on the device: no sync
        correct = torch.zeros((), device=self.device)
        seen = 0
        progress = self.progress and self.dist.is_main  # one bar: rank 0's
        bar = _bar(self.loader, progress, f"epoch {self.epoch + 1}/{cfg.epochs}")
        t0 = time.perf_counter()
        for x, y in bar:
            fitted = self.budget.before_step(  # loss_sum.item() waits for the device
                self.sched.last_epoch, cfg.epochs, sync=loss_sum.item, time_eval=self._time_eval
            )
            if fitted is not None:
                self._set_steps(fitted)
                self._cap_warmup()
                if progress:
                    bar.set_description(f"epoch {self.epoch + 1}/{cfg.epochs}")
            if self.sched.last_epoch >= self.total_steps():  # the run ends in this epoch
                break
            m = augment.mix(
                x,
                y,
                k,
                cfg.mixup if mixing else 0.0,
                cfg.cutmix if mixing else 0.0,
                cfg.mix_prob,
                cfg.label_smoothing,
                self.aug_gen,
                self.beta_rng,
            )
            with autocast(self.device, self.dtype):
                logits = self.forward(m.x)
            loss = soft_cross_entropy(logits.float(), m.targets)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            if self.ema is not None:
                self._update_ema(self.sched.last_epoch)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == m.targets.argmax(1)).sum()
            seen += len(y)
            if progress and bar.n % 20 == 0:  # an occasional sync for the bar only
                dt = time.perf_counter() - t0
                bar.set_postfix(
                    loss=f"{loss_sum.item() / seen:.3f}",
                    acc=f"{correct.item() / seen:.3f}",
                    img_s=f"{seen / dt:.0f}",
                )
        seen = torch.tensor(seen, device=self.device)
        loss_sum, correct, seen = distributed.all_reduce_sum(self.dist, loss_sum, correct, seen)
        return loss_sum.item() / seen.item(), correct.item() / seen.item(), int(seen.item())

    # --- the run -----------------------------------------------------------------------

    def run(self, on_epoch_end: Callable[[dict], None] | None = None) -> list[dict]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:  # rank 0 alone writes files and logs
            self._write_config()
            val = self.data.val
            log.info(
                "ViT: %s parameters; %d train / %s%d test images; device %s, %s, %s loader",
                f"{count_parameters(self.model):,}",
                len(self.data.train),
                "" if val is None else f"{len(val)} validation / ",
                len(self.data.test),
                self.device,
                str(self.dtype).replace("torch.", ""),
                type(self.loader).__name__,
            )
            log.info("ViT: %s", describe_flops(cfg.model))
        plotted = time.monotonic()
        while self.epoch < cfg.epochs:
            lr = self.opt.param_groups[0]["lr"]
            t0 = time.perf_counter()
            try:
                train_loss, train_acc, seen = self.train_epoch()
            except KeyboardInterrupt:
                if self.dist.is_main:
                    save_atomic(self.weights_checkpoint(), self.out / "interrupted.pt")
                    log.warning(
                        "interrupted: weights saved to %s; `vitsam train --resume %s` continues "
                        "from the last finished epoch (%d)",
                        self.out / "interrupted.pt",
                        self.out,
                        self.epoch,
                    )
                raise
            if not math.isfinite(train_loss):
                raise VitsamError(
                    f"training diverged: the loss became {train_loss} in epoch {self.epoch + 1}; "
                    f"{self.out / 'last.pt'} keeps the last good state (epoch {self.epoch}). "
                    "Lower --lr, set --grad-clip 1.0, or use --precision fp32"
                )
            t1 = time.perf_counter()
            seconds = t1 - t0
            last = self.epoch + 1 >= cfg.epochs
            result = self._evaluate(self.eval_data, last)
            self.epoch += 1
            name = self.eval_name
            row = {
                "epoch": self.epoch,
                "lr": lr,
                "train_loss": round(train_loss, 6),
                "train_acc": round(train_acc, 6),
                f"{name}_loss": round(result.loss, 6),
                f"{name}_acc": round(result.accuracy, 6),
                "epoch_seconds": round(seconds, 3),
                "images_per_second": round(seen / seconds, 1),
                "eval_seconds": round(time.perf_counter() - t1, 3),
                "eval_views": self._views(last),
                # since the run started (data loading included; a resumed run adds its time)
                "wall_seconds": self._wall_seconds(),
                "eval_precision": str(self.eval_dtype).replace("torch.", ""),
            }
            # before the checkpoint: a run that the budget ends now resumes as ended
            refitted = self.budget.after_epoch(
                done=self.epoch,
                steps=self.sched.last_epoch,
                total_steps=self.total_steps(),
                train_s=seconds,
                train_ended=t1,
                eval_s=row["eval_seconds"],
            )
            if refitted is not None:
                self._set_steps(refitted)  # never fewer than the steps taken
            if self.epoch >= cfg.epochs and not last and self._views(True) != row["eval_views"]:
                # the budget ended the run an epoch early: its last evaluation, with TTA
                result = self._evaluate(self.eval_data, last=True)
                row.update(
                    {
                        f"{name}_loss": round(result.loss, 6),
                        f"{name}_acc": round(result.accuracy, 6),
                    }
                )
                row["eval_views"] = self._views(True)
                row["wall_seconds"] = self._wall_seconds()
            if name == "val" and self.epoch >= cfg.epochs:  # the test set, once, to report
                test = self._evaluate(self.data.test, last=True)
                row.update(test_loss=round(test.loss, 6), test_acc=round(test.accuracy, 6))
                row["wall_seconds"] = self._wall_seconds()
            self.history.append(row)
            improved = result.accuracy > self.best_acc
            self.best_acc = max(self.best_acc, result.accuracy)
            if self.dist.is_main:
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                if improved:
                    save_atomic(
                        self.weights_checkpoint(**{f"{name}_acc": result.accuracy}),
                        self.out / "best.pt",
                    )
                save_atomic(self.state(), self.out / "last.pt")
                # a redraw takes ~0.1 s, which adds up over short GPU epochs: at most every 10 s
                if self.epoch in (1, cfg.epochs) or time.monotonic() - plotted >= 10:
                    plot_curves(self.history, self.out / "curves.png")
                    plotted = time.monotonic()
                log.info(
                    "epoch %d/%d  train loss %.4f acc %.4f  %s loss %.4f acc %.4f  %.1fs  %.0f img/s",
                    self.epoch,
                    cfg.epochs,
                    train_loss,
                    train_acc,
                    name,
                    result.loss,
                    result.accuracy,
                    seconds,
                    row["images_per_second"],
                )
            distributed.barrier(self.dist)  # the other ranks wait for the checkpoint
            if on_epoch_end is not None:
                on_epoch_end(row)
        return self.history


def train(
    cfg: TrainConfig, progress: bool = False, on_epoch_end=None, started: float | None = None
) -> list[dict]:
    """Train a fresh run into cfg.out; returns one metrics dict per epoch. `started` is the
    time.perf_counter() reading a time budget counts from (default: now)."""
    return Trainer(cfg, progress=progress, started=started).run(on_epoch_end)


# Fields a resumed run may change: where and how fast it runs, and its length.
RESUMABLE_FIELDS = frozenset(
    {"device", "precision", "eval_precision", "workers", "compile", "epochs", "max_steps"}
)


def resume(
    run_dir: str | Path, progress: bool = False, on_epoch_end=None, **overrides
) -> list[dict]:
    """Continue a run from RUN_DIR/last.pt: model, optimizer, schedule, scaler, RNG, epoch.

    `overrides` may change the fields in RESUMABLE_FIELDS; a new `epochs` extends (or
    shortens) the run, and the learning-rate schedule is rebuilt for the new length from
    the next step on. The metrics log is truncated to the checkpoint's epoch. Raises
    VitsamError for any other field, or when RUN_DIR has no last.pt.
    """
    run_dir = Path(run_dir)
    path = run_dir / "last.pt"
    if not path.exists():
        raise VitsamError(
            f"{run_dir}: no last.pt to resume from (was it trained with --out {run_dir}?)"
        )
    state = read_checkpoint(path)
    cfg = from_dict(state["config"])
    cfg.out = str(run_dir)
    changes = set(overrides) - RESUMABLE_FIELDS
    if changes:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(changes))
        raise VitsamError(
            f"{flags} cannot change when resuming {run_dir} (only "
            f"{', '.join('--' + k for k in sorted(RESUMABLE_FIELDS))} can): start a new run "
            "with another --out to train with different settings"
        )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    if "epochs" in overrides and "max_steps" not in overrides:
        cfg.max_steps = 0  # whole epochs: a budget's cut-short last epoch no longer stands
    if cfg.epochs != state["config"]["epochs"]:
        log.info(
            "the run was planned for %d epochs, now %d: its learning-rate schedule is rebuilt "
            "for %d epochs from epoch %d on",
            state["config"]["epochs"],
            cfg.epochs,
            cfg.epochs,
            state["epoch"] + 1,
        )
    trainer = Trainer(cfg, progress=progress)
    trainer.load_state(state)
    if trainer.dist.is_main:
        metrics = run_dir / "metrics.jsonl"
        write_atomic(metrics, "".join(json.dumps(r) + "\n" for r in trainer.history))
    return trainer.run(on_epoch_end)


def _bar(loader, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(loader, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
