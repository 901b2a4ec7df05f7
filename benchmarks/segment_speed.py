"""Seconds per image for text-prompted segmentation with the default models at full size.

Random weights time the same as trained ones, so the models are built from the default
transformers configs (Grounding DINO: Swin-T + BERT-base; SAM 2.1 tiny) and saved to a
temporary folder, then loaded through vitsam's real loading path. Compared:

  - vitsam's TextSegmenter: one detector pass for all phrases, one image embedding,
    all boxes decoded together;
  - a plain script calling the transformers models the straightforward way, as the model
    cards show: per phrase, the detector on that phrase, then SAM 2 on image + box.

One box per phrase in both (the top-scoring one), so the work is the same.

`--folder N` times instead a folder run (`vitsam segment DIR`'s loop, vitsam.seg.local_runner)
over N JPEG copies of the image, writing the overlay, masks and JSON of each: one step at
a time, then with reading and writing overlapped with the models; images/s of each.
`--detector DIR --segmenter DIR` use saved models instead of building the full-size ones.

`--models fast` times the edge set (`vitsam segment --models fast`: OmDet-Turbo with its
Swin-T and CLIP text tower, EdgeTAM with RepViT-M1, both at their transformers default
sizes, random weights) against the plain fp32 script of the default models, as the
target is stated (<= 0.2x its time per image), and prints each model set's peak memory.

`--profile` times instead each stage of one image's run at default settings (one phrase),
from hooks on the models' submodules and wrappers on the processors, pycocotools and the
writers: preprocessing, Swin backbone, BERT text encoder, fusion encoder, decoder, the
rest of the detector (projections, heads, query selection, box post-processing), SAM's
preprocessing, image encoder, prompt encoder + mask decoder, mask upsampling, RLE and each
output file. Also the detector's and the SAM image encoder's FLOPs, beside the GFLOP/s of
a matmul at their shapes: the floor a run in this precision can reach on this CPU.

    python benchmarks/segment_speed.py [--size 1024x768] [--repeats 2]
    python benchmarks/segment_speed.py --folder 8 [--size 1024x768] [--repeats 2]
    python benchmarks/segment_speed.py --profile [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PHRASES = ["cat", "remote control", "dog", "red car", "person"]


def build_models(folder: Path) -> tuple[Path, Path]:
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        Sam2Config,
        Sam2ImageProcessor,
        Sam2Model,
        Sam2Processor,
    )

    # bert-base-uncased's layout: special tokens at their usual ids, 30522 entries in all
    vocab = {f"[unused{i}]": i for i in range(30522)}
    special = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012}
    words = sorted({w for p in PHRASES for w in p.split()})
    for token, i in [*special.items(), *((w, 2000 + j) for j, w in enumerate(words))]:
        vocab.pop(next(k for k, v in vocab.items() if v == i))
        vocab[token] = i
    det, seg = folder / "grounding-dino-tiny", folder / "sam2.1-tiny"
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(GroundingDinoConfig()).save_pretrained(det)
    GroundingDinoProcessor(
        GroundingDinoImageProcessor(), BertTokenizer(vocab=vocab)
    ).save_pretrained(det)
    Sam2Model(Sam2Config()).save_pretrained(seg)
    Sam2Processor(Sam2ImageProcessor()).save_pretrained(seg)
    return det, seg


def build_edge_models(folder: Path) -> tuple[Path, Path]:
    """The edge set at full size: OmDet-Turbo (timm Swin-T, CLIP ViT-B/16 text tower, as
    omlab/omdet-turbo-swin-tiny-hf) and EdgeTAM (timm RepViT-M1, as yonigozlan/EdgeTAM-hf)."""
    import json

    import timm
    from transformers import (
        CLIPTokenizer,
        DetrImageProcessor,
        EdgeTamVideoConfig,
        EdgeTamVideoModel,
        EdgeTamVisionConfig,
        OmDetTurboConfig,
        OmDetTurboForObjectDetection,
        OmDetTurboProcessor,
        Sam2ImageProcessor,
        Sam2VideoProcessor,
        TimmWrapperConfig,
    )
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    det, seg = folder / "omdet-turbo", folder / "edgetam"
    det.mkdir(parents=True)
    torch.manual_seed(0)
    OmDetTurboForObjectDetection(OmDetTurboConfig()).save_pretrained(det)
    letters = sorted({c for p in PHRASES for c in p if c != " "})  # a byte-level BPE over them
    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for c in letters:
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (det / "vocab.json").write_text(json.dumps(vocab))
    (det / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(det / "vocab.json"), str(det / "merges.txt"), pad_token="!")
    images = DetrImageProcessor(size={"height": 640, "width": 640}, do_pad=False)  # the hub's
    OmDetTurboProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(det)
    args = {"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]}
    channels = [f["num_chs"] for f in timm.create_model("repvit_m1", **args).feature_info]
    vision = EdgeTamVisionConfig(
        backbone_config=TimmWrapperConfig(architecture="repvit_m1", model_args=args),
        backbone_channel_list=channels[::-1],
    )
    EdgeTamVideoModel(EdgeTamVideoConfig(vision_config=vision)).save_pretrained(seg)
    Sam2VideoProcessor(Sam2ImageProcessor(), Sam2VideoVideoProcessor()).save_pretrained(seg)
    return det, seg


def forget(ts) -> None:
    """The segmenter's held embedding dropped: a repeat on the same image encodes it again,
    as a new image would (SAM 3 holds none)."""
    if hasattr(ts.segmenter, "forget"):
        ts.segmenter.forget()


def fresh_segment(ts, image, prompt):
    forget(ts)
    return ts.segment(image, prompt)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB (Linux: ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_of(repeats: int, fn, *args):
    """(fastest seconds, result of that call) over `repeats` calls of `fn(*args)`."""
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn(*args)
        seconds = time.perf_counter() - t0
        if best is None or seconds < best[0]:
            best = (seconds, result)
    return best


def load_models(detector: str | None, segmenter: str | None, tmp: Path, precision="auto"):
    """(vitsam TextSegmenter on the CPU with both thresholds at 0, detector folder, segmenter
    folder): the saved folders given, else the full-size models built into `tmp`."""
    from vitsam.seg import TextSegmenter

    det, seg = (Path(detector), Path(segmenter)) if detector else build_models(tmp)
    ts = TextSegmenter.from_pretrained(
        str(det), str(seg), device="cpu", precision=precision, box_threshold=0.0,
        text_threshold=0.0,
    )  # fmt: skip
    return ts, det, seg


def plain_models(det: Path, seg: Path):
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, Sam2Model

    dm = AutoModelForZeroShotObjectDetection.from_pretrained(det).eval()
    sm = Sam2Model.from_pretrained(seg).eval()
    return AutoProcessor.from_pretrained(det), dm, AutoProcessor.from_pretrained(seg), sm


@torch.inference_mode()
def plain_script(
    models, image: Image.Image, phrases: list[str], dtype: torch.dtype = torch.float32
) -> tuple[dict, list]:
    """The model-card way: for each phrase, detect, then segment image + box from scratch;
    in bf16 as a user writes it on a CPU, under `torch.autocast` (a whole-model `.to(bf16)`
    makes transformers' Grounding DINO return NaN: PyTorch's bf16 grid_sample, see
    vitsam.seg.deformable).

    Returns (seconds per stage, [(XYXY pixel box, (H, W) bool mask) per phrase]).
    """
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        return _plain_script(models, image, phrases)


def _plain_script(models, image: Image.Image, phrases: list[str]) -> tuple[dict, list]:
    dp, dm, sp, sm = models
    t, found = {"detector": 0.0, "segmenter": 0.0}, []
    for phrase in phrases:
        t0 = time.perf_counter()
        inputs = dp(images=image, text=phrase + ".", return_tensors="pt")
        out = dm(**inputs)
        res = dp.post_process_grounded_object_detection(
            out,
            inputs.input_ids,
            threshold=0.0,
            text_threshold=0.0,
            target_sizes=[image.size[::-1]],
        )[0]
        box = res["boxes"][res["scores"].argmax()].tolist()
        t1 = time.perf_counter()
        inputs = sp(images=image, input_boxes=[[box]], return_tensors="pt")
        out = sm(**inputs, multimask_output=False)
        masks = sp.post_process_masks(out.pred_masks.float(), inputs["original_sizes"])
        t["detector"] += t1 - t0
        t["segmenter"] += time.perf_counter() - t1
        found.append((box, masks[0][0, 0].numpy().astype(bool)))
    return t, found


def agreement(ts, image: Image.Image, plain: list) -> tuple[float, float]:
    """(pixels from the plain script's top box to vitsam's nearest box, mask IoU of vitsam's
    mask for the plain box against the plain mask), one phrase: the bar is <= 1 px and
    >= 0.98. The nearest box, not vitsam's top one: random weights score hundreds of
    Grounding DINO's 900 queries at 1.0, so "the top box" is a tie broken by the order of
    the queries, not a result. The plain box is clipped to the image, as vitsam's are."""
    (box, mask) = plain[0]
    w, h = image.size
    box = np.clip(np.array(box), 0, [w, h, w, h])
    found = ts.detector.detect(image, PHRASES[:1], 0.0, 0.0)
    px = np.abs(np.array([d.box for d in found]) - box).max(1).min()
    ours = ts.segment_boxes(image, [box.tolist()]).detections[0].mask
    return float(px), float((mask & ours).sum() / max((mask | ours).sum(), 1))


def folder_speed(ts, image: Image.Image, n: int, repeats: int, tmp: Path) -> None:
    """Images/s of segment_folder over n copies of `image`, without and with overlap."""
    from vitsam.seg.labelset import named_images
    from vitsam.seg.local_runner import Outputs, segment_folder

    src = tmp / "images"
    src.mkdir()
    w, h = image.size
    for i in range(n):  # distinct pictures: the same one twice would keep its embedding
        pixels = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(src / f"{i:04d}.jpg", quality=90)
    entries, prompt = named_images([src]), ". ".join(PHRASES)
    ts.segment(image, prompt)  # warm-up: first-call allocations stay out of the timing
    print("| folder run | images | best s | images/s |")
    print("|---|---|---|---|")
    rates = {}
    for overlap in (False, True):
        best = float("inf")
        for r in range(repeats):
            out = tmp / f"out-{overlap}-{r}"
            t0 = time.perf_counter()
            failed = segment_folder(
                entries, lambda im: ts.segment(im, prompt), Outputs(out), overlap=overlap
            )
            best = min(best, time.perf_counter() - t0)
            if failed:
                raise SystemExit(f"{failed} images failed in {out}")
        rates[overlap] = n / best
        name = "overlapped (read + write beside the models)" if overlap else "one step at a time"
        print(f"| {name} | {n} | {best:.2f} | {rates[overlap]:.3f} |", flush=True)
    print(f"\noverlap: {rates[True] / rates[False]:.2f}x the images/s of one step at a time")


class StageTimer:
    """Seconds per named stage, summed over calls: forward hooks on modules, wrappers on
    methods. Stages must not nest (each second is counted once)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def module(self, module: torch.nn.Module, name: str) -> None:
        def pre(*_):
            self._start[name] = time.perf_counter()

        def post(*_):
            self.add(name, time.perf_counter() - self._start.pop(name))

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def method(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t0)

        setattr(owner, attr, timed)


def profile(ts, image: Image.Image, repeats: int, tmp: Path) -> None:
    """Each stage's seconds (mean of `repeats` runs after a warm-up) and share of the run."""
    import pycocotools.mask
    from torch.utils.flop_counter import FlopCounterMode

    from vitsam.devices import matmul_gflops
    from vitsam.seg import results

    det, sam = ts.detector, ts.segmenter
    timer = StageTimer()
    gd = det.model.model
    for module, name in [
        (gd.backbone, "detector: Swin-T backbone"),
        (gd.text_backbone, "detector: BERT text encoder"),
        (gd.encoder, "detector: fusion encoder (deformable + text cross-attention)"),
        (gd.decoder, "detector: decoder"),
        (sam.model.vision_encoder, "SAM 2.1: image encoder"),
        (sam.model.prompt_encoder, "SAM 2.1: prompt encoder + mask decoder"),
        (sam.model.mask_decoder, "SAM 2.1: prompt encoder + mask decoder"),
    ]:
        timer.module(module, name)
    timer.method(det.processor.image_processor, "preprocess", "detector: preprocessing")
    timer.method(sam.processor.image_processor, "preprocess", "SAM 2.1: preprocessing")
    timer.method(sam.processor, "post_process_masks", "SAM 2.1: mask upsampling to the image")
    timer.method(pycocotools.mask, "encode", "RLE encoding (pycocotools)")
    ts.max_detections = 1  # one phrase, one box: the plain script's work
    prompt = PHRASES[0]
    ts.segment(image, prompt)  # warm-up
    timer.seconds.clear()
    total = detector = 0.0
    for _ in range(repeats):
        forget(ts)
        t0 = time.perf_counter()
        result = ts.segment(image, prompt)
        detector += result.timings["detector"]
        for fmt, name in [("overlay", "overlay PNG"), ("masks", "mask PNG"), ("json", "JSON")]:
            t1 = time.perf_counter()
            results.save(result, image, tmp / "profile", "image", (fmt,))
            timer.add(f"writing: {name}", time.perf_counter() - t1)
        total += time.perf_counter() - t0
    named = sum(v for k, v in timer.seconds.items() if k.startswith("detector:"))
    timer.add("detector: the rest (projections, heads, selection, post-processing)",
              detector - named)  # fmt: skip
    rows = sorted(timer.seconds.items(), key=lambda kv: -kv[1])
    rows.append(("the rest (Python, copies, SAM's neck)", total - sum(timer.seconds.values())))
    print("| stage | s | share |\n|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec / repeats:.3f} | {sec / total:.1%} |")
    print(f"| **whole run, outputs written** | **{total / repeats:.2f}** | 100% |", flush=True)

    with torch.inference_mode(), FlopCounterMode(display=False) as flops:
        inputs = det.processor.image_processor(images=image, return_tensors="pt")
        text, _ = det.text_inputs([prompt])
        det.model(**inputs, **text)
    det_gf = flops.get_total_flops() / 1e9
    with torch.inference_mode(), FlopCounterMode(display=False) as flops:
        sam.set_image(image)
    sam_gf = flops.get_total_flops() / 1e9
    dtype = det.dtype  # the matmuls run in the autocast dtype
    name = str(dtype).removeprefix("torch.")
    ceiling = {(m, k, n): matmul_gflops(dtype, m, k, n, seconds=0.6) for m, k, n in
               [(13328, 256, 2048), (13328, 2048, 256), (16384, 96, 384)]}  # fmt: skip
    print(f"\nFLOPs: detector {det_gf:.0f} GFLOPs, SAM 2.1 image encoder {sam_gf:.0f} GFLOPs")
    for (m, k, n), g in ceiling.items():
        print(f"{name} matmul ({m}, {k}) @ ({k}, {n}): {g:.0f} GFLOP/s")
    best = max(ceiling.values())
    print(f"at {best:.0f} GFLOP/s those FLOPs alone take {(det_gf + sam_gf) / best:.2f} s")
    encoder = timer.seconds.get("SAM 2.1: image encoder", 0.0) / repeats
    for what, gf, sec in (("detector", det_gf, detector / repeats),
                          ("SAM 2.1 image encoder", sam_gf, encoder)):  # fmt: skip
        if sec > 0:
            print(f"{what}: {gf / sec:.0f} GFLOP/s achieved, {gf / sec / best:.0%} of the "
                  f"{name} matmul ceiling")  # fmt: skip


def fast_speed(image: Image.Image, repeats: int, precision: str) -> None:
    """The edge set in vitsam (one and five phrases), then the default models' plain fp32
    script (one phrase): the time ratio the target names, and each one's peak memory
    (measured in that order, so each peak includes what came before it)."""
    from vitsam.seg import TextSegmenter

    with tempfile.TemporaryDirectory() as tmp:
        edet, eseg = build_edge_models(Path(tmp) / "edge")
        ts = TextSegmenter.from_pretrained(str(edet), str(eseg), device="cpu",
                                           precision=precision, box_threshold=0.0)  # fmt: skip
        print(f"vitsam precision: {str(ts.detector.dtype).removeprefix('torch.')}\n")
        print("| pipeline | phrases | detector s | image encoder s | mask decoding s | total s |")
        print("|---|---|---|---|---|---|")
        totals = {}
        for k in (1, 5):
            ts.max_detections = k
            totals[k], r = best_of(repeats, fresh_segment, ts, image, ". ".join(PHRASES[:k]))
            tm = r.timings
            print(f"| vitsam, --models fast (OmDet-Turbo + EdgeTAM) | {k} | {tm['detector']:.2f} | "
                  f"{tm['image_encoder']:.2f} | {tm['mask_decoder']:.2f} | {totals[k]:.2f} |",
                  flush=True)  # fmt: skip
        edge_peak = peak_rss_mb()
        det, seg = build_models(Path(tmp) / "default")
        models = plain_models(det, seg)
        plain, (tm, _) = best_of(repeats, plain_script, models, image, PHRASES[:1], torch.float32)
        print(f"| plain transformers script, fp32 (Grounding DINO-T + SAM 2.1-T) | 1 | "
              f"{tm['detector']:.2f} | (with segmenter) | {tm['segmenter']:.2f} (encoder + decoder) "
              f"| {plain:.2f} |")  # fmt: skip
    print(f"\nvitsam --models fast at one phrase: {totals[1] / plain:.2f}x the default models' "
          f"plain fp32 script's time ({plain / totals[1]:.1f}x its speed; target <= 0.2x)")  # fmt: skip
    print(f"peak memory: {edge_peak:.0f} MB after the edge set; {peak_rss_mb():.0f} MB with the "
          "default models' script loaded as well")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="1024x768")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--folder", type=int, metavar="N", help="time a folder run of N images")
    p.add_argument("--profile", action="store_true", help="time each stage of one image's run")
    p.add_argument("--detector", help="a saved detector folder (default: build full size)")
    p.add_argument("--segmenter", help="a saved segmenter folder (default: build full size)")
    p.add_argument("--precision", default="auto", help="vitsam's precision (auto, fp32, bf16)")
    p.add_argument("--models", choices=("default", "fast"), default="default",
                   help="fast: the edge set against the default models' plain fp32 script")  # fmt: skip
    args = p.parse_args()
    if bool(args.detector) != bool(args.segmenter):
        p.error("--detector and --segmenter go together")
    w, h = map(int, args.size.split("x"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    from vitsam.devices import cpu_description

    print(f"CPU: {cpu_description()}; torch {torch.__version__}, image {w}x{h}, "
          f"best of {args.repeats}")  # fmt: skip
    if args.models == "fast":
        return fast_speed(image, args.repeats, args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        ts, det, seg = load_models(args.detector, args.segmenter, Path(tmp), args.precision)
        dtype = ts.detector.dtype
        print(f"vitsam precision: {str(dtype).removeprefix('torch.')}\n")
        if args.profile:
            return profile(ts, image, args.repeats, Path(tmp))
        if args.folder:
            ts.max_detections = len(PHRASES)  # a few objects per image, as in a photo
            return folder_speed(ts, image, args.folder, args.repeats, Path(tmp))
        print("| pipeline | phrases | detector s | image encoder s | mask decoding s | total s |")
        print("|---|---|---|---|---|---|")
        totals = {}
        for k in (1, 5):
            ts.max_detections = k  # one box per phrase, as in the plain script
            total, r = best_of(args.repeats, fresh_segment, ts, image, ". ".join(PHRASES[:k]))
            totals[k], tm = total, r.timings
            print(
                f"| vitsam TextSegmenter | {k} | {tm['detector']:.2f} | {tm['image_encoder']:.2f} | "
                f"{tm['mask_decoder']:.2f} | {total:.2f} |",
                flush=True,
            )
        models = plain_models(det, seg)
        plain, agree = {}, {}
        dtypes = [torch.float32] + ([dtype] if dtype != torch.float32 else [])
        for pd in dtypes:
            name = str(pd).removeprefix("torch.")
            for k in (1, 5):  # best of the same number of tries as vitsam's
                total, (tm, found) = best_of(
                    args.repeats, plain_script, models, image, PHRASES[:k], pd
                )
                plain[pd, k] = total
                if k == 1:
                    agree[pd] = agreement(ts, image, found)
                print(
                    f"| plain transformers script, {name} | {k} | {tm['detector']:.2f} | "
                    f"(with segmenter) | {tm['segmenter']:.2f} (encoder + decoder) | {total:.2f} |",
                    flush=True,
                )
        print(f"\nvitsam: 5 phrases cost {totals[5] / totals[1]:.2f}x one phrase")
        fp32 = plain[torch.float32, 1]
        print(f"vitsam at one phrase: {totals[1] / fp32:.2f}x the plain fp32 script's time "
              f"({fp32 / totals[1]:.2f}x its speed)")  # fmt: skip
        for pd, (px, iou) in agree.items():
            ok = "agrees" if px <= 1 and iou >= 0.98 else "DOES NOT AGREE"
            print(
                f"agreement with the plain {str(pd).removeprefix('torch.')} script (one "
                f"phrase): top box within {px:.3f} px, mask IoU {iou:.4f}: {ok} (bar: <= 1 px, "
                "IoU >= 0.98)"
            )


if __name__ == "__main__":
    main()
