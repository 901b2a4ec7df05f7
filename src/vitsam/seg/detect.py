"""Open-vocabulary detectors behind one interface: `detect(image, phrases) -> [Detection]`.

Grounding DINO (and MM-Grounding-DINO), OWLv2 and CLIPSeg, all through transformers.
Images are PIL RGB; boxes come back as XYXY pixels of that image; every label is one of
the phrases given, exactly.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from vitsam.errors import VitsamError
from vitsam.seg.deformable import use_gather_attention
from vitsam.seg.mixed_precision import Fp32Fallback
from vitsam.seg.registry import DETECTORS, require_timm, resolve, with_hub_errors
from vitsam.seg.request import (  # noqa: F401
    SEPARATORS,
    no_negative_exemplars,
    normalize_text,
    split_prompt,
)
from vitsam.seg.results import Detection

log = logging.getLogger("vitsam")



class Detector(Fp32Fallback):
    """Base: holds a transformers model and its processor on a device; `dtype` is the
    autocast dtype it runs in (see mixed_precision.Mixed)."""

    kind = ""
    compiled = None  # a compiled graph called in place of the model (compiled.py), or None

    def __init__(self, name: str, model, processor, device: torch.device, dtype: torch.dtype):
        self.name, self.processor = name, processor
        self.model = self.place(model, device, dtype)

    @staticmethod
    def from_pretrained(
        name: str, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> Detector:
        """A short name (see registry.DETECTORS), a hub id or a folder saved by save_pretrained."""
        kind, source = resolve(name, DETECTORS, "detector")
        cls = {"grounding-dino": GroundingDino, "owlv2": Owlv2, "clipseg": ClipSeg,
               "omdet-turbo": OmDetTurbo}.get(kind)  # fmt: skip
        if cls is None:
            raise VitsamError(
                f"{name}: not a detector (a folder or hub id of a detector model is needed)"
            )
        from transformers import AutoProcessor

        require_timm(kind, name)
        processor = with_hub_errors(name, lambda: AutoProcessor.from_pretrained(source))
        model = with_hub_errors(name, lambda: cls.model_class().from_pretrained(source))
        return cls(name, model, processor, device, dtype)

    def _inputs(self, **kwargs) -> dict:
        return self._on_device(self.processor(return_tensors="pt", **kwargs))

    def _on_device(self, inputs) -> dict:
        """Tensors to the device; floating ones in fp32 (autocast casts them where it pays)."""
        return {
            k: v.to(self.device, torch.float32 if v.is_floating_point() else None)
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }

    def tokens(self, phrases: list[str]) -> list[list[int]]:
        """Token ids of each phrase alone (no special tokens), after checking the text limit.

        A phrase made only of tokens the tokenizer does not know (an emoji, for a
        WordPiece vocabulary) is logged as a warning: it cannot match anything reliably.
        Raises VitsamError, before the model runs, when a phrase is over the limit.
        """
        tok = self.processor.tokenizer
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in phrases]
        for phrase, t in zip(phrases, ids):
            if all(i == tok.unk_token_id for i in t):
                log.warning(
                    "phrase %r has no token the %s detector knows: it will match nothing reliably",
                    phrase, self.kind,
                )  # fmt: skip
        self.check_length(phrases, ids)
        return ids

    def check_length(self, phrases: list[str], ids: list[list[int]]) -> None:
        """CLIP text towers (OWLv2, CLIPSeg) read each phrase alone, with start and end
        tokens, up to the config's max_position_embeddings (16 for OWLv2, 77 for CLIPSeg)."""
        limit = self.model.config.text_config.max_position_embeddings
        for phrase, t in zip(phrases, ids):
            if len(t) + 2 > limit:
                raise VitsamError(
                    f"phrase {_short(phrase)} is {len(t) + 2} tokens, over the {self.kind} "
                    f"detector's limit of {limit} per phrase: shorten it"
                )

    def detect(
        self, image: Image.Image, phrases: list[str], box_threshold: float, text_threshold: float
    ) -> list[Detection]:
        """Boxes for `phrases` in `image` (RGB): XYXY pixels, score in [0, 1], label one of
        `phrases`; sorted by score. Raises VitsamError for a phrase over the text limit or
        outputs that are not finite (see mixed_precision.Fp32Fallback)."""
        raise NotImplementedError

    def detect_like(
        self,
        image: Image.Image,
        examples: list[tuple[Image.Image, tuple[float, float, float, float], bool]],
        label: str,
        box_threshold: float,
        text: str | None = None,
    ) -> list[Detection]:
        """Boxes in `image` of what the examples show, labelled `label`. Each example is
        (reference, box, positive): `box` XYXY pixels on `reference` (which may be `image`
        itself); a negative one boxes what must not match. `text`: a phrase to search
        for beside the boxes (only negative boxes then). Raises VitsamError for a detector
        that cannot take examples as its query, or negative examples it cannot read."""
        raise VitsamError(
            f"the {self.kind or self.name} detector takes text only: exemplars need --detector "
            "owlv2 (OWLv2's image-guided detection) or --segmenter sam3"
        )


class GroundingDino(Detector):
    """One pass for all phrases; each box is labelled with the phrase whose tokens score best.

    The text is "p1. p2. p3." as the model was trained on (Liu et al. 2023, Grounding DINO);
    its token ids are built here from each phrase's own tokens, so the tokens of each
    phrase are known exactly, whatever the tokenizer does with the joined text.
    """

    kind = "grounding-dino"

    def __init__(self, name: str, model, processor, device: torch.device, dtype: torch.dtype):
        super().__init__(name, model, processor, device, dtype)
        use_gather_attention(self.model)  # CPU: deformable attention as one gather

    @staticmethod
    def model_class():
        from transformers import AutoModelForZeroShotObjectDetection

        return AutoModelForZeroShotObjectDetection

    def check_length(self, phrases, ids):
        """One sequence for all phrases: [CLS] p1 . p2 . ... [SEP], at most max_text_len (256)."""
        limit = getattr(self.model.config, "max_text_len", 256)
        ends = np.cumsum([len(t) + 1 for t in ids]) + 2  # tokens up to each phrase's '.', + [SEP]
        if ends[-1] > limit:
            phrase = phrases[int(np.argmax(ends > limit))]
            raise VitsamError(
                f"phrase {_short(phrase)} does not fit: the prompt is {ends[-1]} tokens, over "
                f"the {self.kind} detector's limit of {limit} for all phrases together; use "
                "fewer or shorter phrases"
            )

    def text_inputs(self, phrases: list[str]) -> tuple[dict, list[list[int]]]:
        """(input_ids, token_type_ids, attention_mask as (1, T) tensors, token positions of
        each phrase); a phrase with no tokens has no positions."""
        tok = self.processor.tokenizer
        ids, spans = [tok.cls_token_id], []
        for t in self.tokens(phrases):
            spans.append(list(range(len(ids), len(ids) + len(t))))
            ids += [*t, tok.convert_tokens_to_ids(".")]
        ids = torch.tensor([[*ids, tok.sep_token_id]])
        text = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
                "attention_mask": torch.ones_like(ids)}  # fmt: skip
        return text, spans

    @torch.inference_mode()
    def detect(self, image, phrases, box_threshold, text_threshold):
        text, spans = self.text_inputs(phrases)
        n = text["input_ids"].shape[1]  # logits past the text are -inf by design

        def run():
            images = self.processor.image_processor(images=image, return_tensors="pt")
            return (self.compiled or self.model)(**self._on_device({**images, **text}))

        out = self.run_finite(run, lambda o: (o.logits[..., :n], o.pred_boxes))
        probs = out.logits[0, :, :n].float().sigmoid()  # (queries, tokens)
        per_phrase = torch.stack(  # (queries, phrases); a phrase with no tokens scores 0
            [probs[:, s].max(-1).values if s else probs.new_zeros(len(probs)) for s in spans], 1
        )
        score = probs.max(-1).values
        best_p, best = per_phrase.max(-1)
        keep = (score > box_threshold) & (best_p > text_threshold)
        w, h = image.size
        cx, cy, bw, bh = out.pred_boxes[0].float().unbind(-1)
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        boxes = boxes * torch.tensor([w, h, w, h], device=boxes.device)
        labels = [phrases[i] for i in best[keep].tolist()]
        return _detections(boxes[keep], score[keep], labels, w, h)


class Owlv2(Detector):
    kind = "owlv2"

    @staticmethod
    def model_class():
        from transformers import Owlv2ForObjectDetection

        return Owlv2ForObjectDetection

    @torch.inference_mode()
    def detect(self, image, phrases, box_threshold, text_threshold):
        self.tokens(phrases)
        out = self.run_finite(
            lambda: self.model(**self._inputs(text=[phrases], images=image, padding=True)),
            lambda o: (o.logits, o.pred_boxes),
        )
        w, h = image.size
        side = max(w, h)  # OWLv2 pads the image to a square before resizing
        res = self.processor.post_process_grounded_object_detection(
            outputs=out, threshold=box_threshold, target_sizes=[(side, side)]
        )[0]
        labels = [phrases[int(i)] for i in res["labels"]]
        return _detections(res["boxes"].float(), res["scores"].float(), labels, w, h)

    @torch.inference_mode()
    def detect_like(self, image, examples, label, box_threshold, text=None):
        """OWLv2's image-guided detection (transformers' `image_guided_detection`, Minderer
        et al. 2023): each example's boxed crop is embedded as the query, each of the
        image's boxes scored against it; boxes over `box_threshold`, NMS at IoU 0.3 as the
        processor does. Raises VitsamError for negative examples (OWLv2 has no such
        query)."""
        if text is not None or not all(positive for _, _, positive in examples):
            raise no_negative_exemplars()
        found = []
        for reference, box, _ in examples:
            found += self._like(image, reference, box, label, box_threshold)
        return found

    def _like(self, image, reference, box, label, box_threshold):
        example = reference.crop(tuple(int(round(v)) for v in box))
        inputs = self.processor(images=image, query_images=example, return_tensors="pt")
        out = self.run_finite(
            lambda: self.model.image_guided_detection(**self._on_device(inputs)),
            lambda o: (o.logits, o.target_pred_boxes),
        )
        w, h = image.size
        side = max(w, h)  # padded to a square, as for text
        res = self.processor.post_process_image_guided_detection(
            outputs=out, threshold=box_threshold, target_sizes=torch.tensor([[side, side]])
        )[0]
        scores = res["scores"].float()
        return _detections(res["boxes"].float(), scores, [label] * len(scores), w, h)


class OmDetTurbo(Detector):
    """OmDet-Turbo (Zhao et al. 2024, "Real-time Transformer-based Open-Vocabulary
    Detection with Efficient Fusion Head"): a Swin-T backbone, a CLIP text tower encoding
    each phrase once (and caching it), and a deformable-attention decoder; transformers'
    `OmDetTurboForObjectDetection`. Each phrase is a class of the task prompt
    "Detect a, b."; boxes over `box_threshold` after its class-wise NMS (IoU 0.5, as the
    processor does)."""

    kind = "omdet-turbo"
    nms_iou = 0.5  # the processor's default, as the authors' demo runs it

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        use_gather_attention(self.model)  # CPU: deformable attention as one gather (deformable.py)

    @staticmethod
    def model_class():
        from transformers import OmDetTurboForObjectDetection

        return OmDetTurboForObjectDetection

    @torch.inference_mode()
    def detect(self, image, phrases, box_threshold, text_threshold):
        """`text_threshold` is unused: each phrase is scored as a whole class."""
        self.tokens(phrases)
        out = self.run_finite(
            lambda: self.model(**self._inputs(images=image, text=phrases)),
            lambda o: (o.decoder_class_logits, o.decoder_coord_logits),
        )
        w, h = image.size
        res = self.processor.post_process_grounded_object_detection(
            _as_float(out), text_labels=phrases, threshold=box_threshold,
            nms_threshold=self.nms_iou, target_sizes=[(h, w)],
        )[0]  # fmt: skip
        return _detections(res["boxes"].float(), res["scores"].float(), res["text_labels"], w, h)


def _as_float(out):
    """The outputs post-processing reads, in fp32 (bf16 runs give bf16 logits)."""
    for key in ("decoder_class_logits", "decoder_coord_logits"):
        out[key] = out[key].float()
    return out


class ClipSeg(Detector):
    """CLIPSeg's heat map per phrase, thresholded; each connected region becomes a box."""

    kind = "clipseg"
    min_area = 0.001  # regions under this share of the heat map are noise

    @staticmethod
    def model_class():
        from transformers import CLIPSegForImageSegmentation

        return CLIPSegForImageSegmentation

    @torch.inference_mode()
    def detect(self, image, phrases, box_threshold, text_threshold):
        self.tokens(phrases)
        logits = self.run_finite(
            lambda: (
                self.model(
                    **self._inputs(text=phrases, images=[image] * len(phrases), padding=True)
                ).logits
            ),
            lambda t: (t,),
        ).float()
        heat = logits.view(len(phrases), *logits.shape[-2:]).sigmoid().cpu().numpy()  # (P, h, w)
        w, h = image.size
        sx, sy = w / heat.shape[2], h / heat.shape[1]
        boxes, scores, labels = [], [], []
        for phrase, hm in zip(phrases, heat):
            for (x1, y1, x2, y2), peak in heatmap_regions(hm, box_threshold, self.min_area):
                boxes.append([x1 * sx, y1 * sy, x2 * sx, y2 * sy])
                scores.append(peak)
                labels.append(phrase)
        if not boxes:
            return []
        return _detections(torch.tensor(boxes), torch.tensor(scores), labels, w, h)


def heatmap_regions(
    heat: np.ndarray, threshold: float, min_area: float = 0.0
) -> list[tuple[tuple[int, int, int, int], float]]:
    """The 4-connected regions of `heat > threshold` in an (h, w) map, as (box, peak):
    box XYXY in map cells (x2, y2 exclusive), peak the region's highest value. Regions
    covering less than `min_area` of the map are dropped. Labelling: scipy.ndimage.label."""
    from scipy import ndimage

    regions, count = ndimage.label(heat > threshold)  # 4-connected by default
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    areas = np.bincount(regions.ravel(), minlength=count + 1)[1:]
    peaks = ndimage.maximum(heat, regions, index)
    out = []
    for (ys, xs), area, peak in zip(ndimage.find_objects(regions), areas, peaks):
        if area >= min_area * heat.size:
            out.append(((xs.start, ys.start, xs.stop, ys.stop), float(peak)))
    return out


def _short(phrase: str, most: int = 60) -> str:
    """A phrase quoted for a message, cut to `most` characters."""
    return repr(phrase if len(phrase) <= most else phrase[: most - 3] + "...")


def _detections(boxes, scores, labels, w: int, h: int) -> list[Detection]:
    """Clip boxes to the image, drop empty ones, sort by score (highest first)."""
    out = []
    for box, score, label in zip(boxes.tolist(), scores.tolist(), labels):
        x1, y1, x2, y2 = (
            max(0.0, box[0]),
            max(0.0, box[1]),
            min(float(w), box[2]),
            min(float(h), box[3]),
        )
        if x2 - x1 >= 1 and y2 - y1 >= 1:
            out.append(Detection(label, float(score), (x1, y1, x2, y2)))
    return sorted(out, key=lambda d: -d.score)


def nms(detections: list[Detection], iou: float) -> list[Detection]:
    """Non-maximum suppression across all phrases (higher score wins)."""
    if len(detections) < 2:
        return detections
    from torchvision.ops import nms as tv_nms

    boxes = torch.tensor([d.box for d in detections], dtype=torch.float32)
    scores = torch.tensor([d.score for d in detections])
    keep = tv_nms(boxes, scores, iou).tolist()
    return [detections[i] for i in sorted(keep)]
