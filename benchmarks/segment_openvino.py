"""OpenVINO against eager PyTorch for the default text-segmentation models on a CPU, in fp32.

A measured candidate for the CPU pipeline (issue 14), not yet wired into it: the two
heavy passes of `TextSegmenter`, Grounding DINO tiny (Swin-T + BERT-base) and SAM 2.1
tiny's image encoder, are converted from the loaded torch modules with
`openvino.convert_model`, compiled for the CPU with `INFERENCE_PRECISION_HINT=f32`, and
timed against the same modules in eager PyTorch on the same inputs (full size, random
weights, one phrase; best of `--repeats`). Printed: seconds per call of each, the
conversion and compilation seconds, the agreement of the outputs, and the whole one-phrase
pipeline with both passes swapped, beside the plain transformers script of
`segment_speed.py`.

Two parts of Grounding DINO have no conversion rule in OpenVINO 2026.4, so the probe
works around them without changing the model's arithmetic: the text masks
(`generate_masks_with_special_tokens_and_transfer_map`: torch.isin, cummax, cummin) are
computed in torch and passed in as inputs, and `torch.special.logit(x, eps)` is traced as
log(x / (1 - x)) of x clamped to [eps, 1 - eps] (its definition). Input shapes are fixed
at conversion: the traced graph holds the feature maps' sizes as constants (transformers'
deformable attention loops over them in Python), so each image size and prompt length
needs its own conversion.

Agreement with random weights is a harsh check: many queries score exactly 1.0 and the
two-stage query selection (top 900 of ~18,000 encoder positions) breaks near-ties by
rounding, so it reports the top query's box, the share of the 900 boxes that a box of the
eager run matches within 1 px, and the mask IoU of the top box decoded from each
runtime's image embedding.

    pip install openvino        # or: pip install -e .[bench]
    python benchmarks/segment_openvino.py [--detector DIR --segmenter DIR] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from segment_speed import best_of, fresh_segment, load_models, plain_models, plain_script

TEXT_INPUTS = ["text_self_attention_masks", "position_ids"]
DETECTOR_INPUTS = ["pixel_values", "pixel_mask", "input_ids", "token_type_ids", "attention_mask"]
F32 = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


class DetectorGraph(torch.nn.Module):
    """Grounding DINO with its text masks as inputs: (logits, pred_boxes)."""

    def __init__(self, model, held: dict) -> None:
        super().__init__()
        self.model, self.held = model, held

    def forward(self, pixel_values, pixel_mask, input_ids, token_type_ids, attention_mask,
                text_self_attention_masks, position_ids):  # fmt: skip
        self.held["masks"] = (text_self_attention_masks, position_ids)
        out = self.model(
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
        )
        return out.logits, out.pred_boxes


class EncoderGraph(torch.nn.Module):
    """SAM 2's image encoder: the feature maps of `get_image_embeddings`."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return tuple(self.model.get_image_embeddings(pixel_values))


@contextlib.contextmanager
def traceable(held: dict):
    """Grounding DINO's two unconvertible steps replaced while it is traced (see above)."""
    import transformers.models.grounding_dino.modeling_grounding_dino as gd

    masks, logit = gd.generate_masks_with_special_tokens_and_transfer_map, torch.special.logit

    def clamped_logit(x, eps=None):
        x = x if eps is None else x.clamp(eps, 1 - eps)
        return torch.log(x / (1 - x))

    gd.generate_masks_with_special_tokens_and_transfer_map = lambda *a, **k: held["masks"]
    torch.special.logit = clamped_logit
    try:
        yield
    finally:
        gd.generate_masks_with_special_tokens_and_transfer_map = masks
        torch.special.logit = logit


def convert(module: torch.nn.Module, args: tuple, held: dict | None = None):
    """(compiled OpenVINO model, conversion seconds, compilation seconds); shapes of `args`."""
    import openvino as ov

    t0 = time.perf_counter()
    with torch.no_grad(), traceable(held) if held is not None else contextlib.nullcontext():
        graph = ov.convert_model(
            module, example_input=args, input=[(tuple(a.shape), a.dtype) for a in args]
        )
    t1 = time.perf_counter()
    compiled = ov.Core().compile_model(graph, "CPU", F32)
    return compiled, t1 - t0, time.perf_counter() - t1


def detector_agreement(eager, converted, text_len: int, size: tuple[int, int]) -> str:
    (l1, b1), (l2, b2) = eager, converted
    s1 = l1[0, :, :text_len].sigmoid().max(-1).values
    s2 = l2[0, :, :text_len].sigmoid().max(-1).values
    scale = torch.tensor([*size, *size])  # (cx, cy, w, h) in pixels
    b1, b2 = b1[0] * scale, b2[0] * scale
    top = float((b1[s1.argmax()] - b2[s2.argmax()]).abs().max())
    nearest = torch.cdist(b2, b1, p=float("inf")).min(1).values
    return (
        f"top query's box within {top:.4f} px; {(nearest <= 1).float().mean():.1%} of the "
        f"{len(b2)} boxes within 1 px of an eager box (median {nearest.median():.1e} px, "
        f"largest {nearest.max():.1f} px); {int((s1 >= 1).sum())} eager queries score 1.0"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="1024x768")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--detector", help="a saved detector folder (default: build full size)")
    p.add_argument("--segmenter", help="a saved segmenter folder (default: build full size)")
    args = p.parse_args()
    if bool(args.detector) != bool(args.segmenter):
        p.error("--detector and --segmenter go together")
    try:
        import openvino as ov
    except ImportError:
        raise SystemExit("this benchmark needs OpenVINO: pip install openvino") from None
    import transformers.models.grounding_dino.modeling_grounding_dino as gd

    w, h = map(int, args.size.split("x"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    print(f"CPU, torch {torch.__version__}, OpenVINO {ov.__version__}, {torch.get_num_threads()} "
          f"threads, image {w}x{h}, fp32, best of {args.repeats}\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ts, det, seg = load_models(args.detector, args.segmenter, Path(tmp))
        ts.max_detections = 1
        pipeline, result = best_of(args.repeats, fresh_segment, ts, image, "cat")
        detector, sam = ts.detector, ts.segmenter

        # Grounding DINO (vitsam's model: deformable attention as one gather)
        text, _ = detector.text_inputs(["cat"])
        inputs = {**detector.processor.image_processor(images=image, return_tensors="pt"), **text}
        special = torch.tensor(gd.SPECIAL_TOKENS)
        masks = gd.generate_masks_with_special_tokens_and_transfer_map(text["input_ids"], special)
        inputs.update(zip(TEXT_INPUTS, masks))
        feed = tuple(inputs[k] for k in DETECTOR_INPUTS + TEXT_INPUTS)
        held: dict = {}
        graph = DetectorGraph(detector.model, held).eval()
        with torch.inference_mode():
            det_eager, eager_out = best_of(args.repeats, lambda: graph(*feed))
        compiled, conv_s, comp_s = convert(graph, feed, held)
        request = compiled.create_infer_request()
        det_ov, out = best_of(args.repeats, lambda: request.infer([a.numpy() for a in feed]))
        ov_out = (torch.from_numpy(out[0]), torch.from_numpy(out[1]))
        det_agree = detector_agreement(eager_out, ov_out, text["input_ids"].shape[1], (w, h))
        print(f"Grounding DINO: eager {det_eager:.2f} s, OpenVINO {det_ov:.2f} s "
              f"({det_eager / det_ov:.2f}x); conversion {conv_s:.0f} s + compilation "
              f"{comp_s:.0f} s\n  agreement: {det_agree}", flush=True)  # fmt: skip

        # SAM 2.1's image encoder, then the top box decoded from each embedding
        pixels = sam.processor(images=image, return_tensors="pt")["pixel_values"]
        encoder = EncoderGraph(sam.model).eval()
        with torch.inference_mode():
            enc_eager, _ = best_of(args.repeats, lambda: encoder(pixels))
        compiled, conv_s, comp_s = convert(encoder, (pixels,))
        request = compiled.create_infer_request()
        enc_ov, out = best_of(args.repeats, lambda: request.infer([pixels.numpy()]))
        box = np.array([result.detections[0].box])
        sam.set_image(image)
        mask_eager = sam.predict(box)[0][0]
        sam._embeddings = [torch.from_numpy(out[i]) for i in range(len(out))]
        mask_ov = sam.predict(box)[0][0]
        iou = (mask_eager & mask_ov).sum() / max((mask_eager | mask_ov).sum(), 1)
        print(f"SAM 2.1 image encoder: eager {enc_eager:.2f} s, OpenVINO {enc_ov:.2f} s "
              f"({enc_eager / enc_ov:.2f}x); conversion {conv_s:.0f} s + compilation "
              f"{comp_s:.0f} s\n  agreement: top box's mask IoU {iou:.4f}", flush=True)  # fmt: skip

        models = plain_models(det, seg)
        plain, _ = best_of(args.repeats, lambda: plain_script(models, image, ["cat"]))
        swapped = pipeline - (det_eager - det_ov) - (enc_eager - enc_ov)
        print(f"\none phrase: plain transformers script {plain:.2f} s; vitsam {pipeline:.2f} s "
              f"({plain / pipeline:.2f}x); vitsam with both passes in OpenVINO {swapped:.2f} s "
              f"({plain / swapped:.2f}x; its other stages as timed in eager)")  # fmt: skip


if __name__ == "__main__":
    main()
