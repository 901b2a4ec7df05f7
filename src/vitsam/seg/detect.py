"""Open-vocabulary detectors behind one interface: `detect(image, phrases) -> [Detection]`.

Grounding DINO (and MM-Grounding-DINO), OWLv2 and CLIPSeg, all through transformers.
Images are PIL RGB; boxes come back as XYXY pixels of that image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from vitsam.errors import VitsamError
from vitsam.seg.registry import DETECTORS, resolve, with_hub_errors
from vitsam.seg.results import Detection


def split_prompt(prompt: str) -> list[str]:
    """'cat. remote control.' -> ['cat', 'remote control'] (lower-case, no empties)."""
    phrases = [p.strip().lower() for p in prompt.replace("\n", ".").split(".")]
    phrases = [p for p in phrases if p]
    if not phrases:
        raise VitsamError("empty prompt: give at least one phrase, e.g. 'cat. remote control'")
    return phrases


class Detector:
    """Base: holds a transformers model and its processor on a device."""

    kind = ""

    def __init__(self, name: str, model, processor, device: torch.device, dtype: torch.dtype):
        self.name, self.model, self.processor = name, model.eval().to(device, dtype), processor
        self.device, self.dtype = device, dtype

    @staticmethod
    def from_pretrained(
        name: str, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> Detector:
        """A short name (see registry.DETECTORS), a hub id or a folder saved by save_pretrained."""
        kind, source = resolve(name, DETECTORS, "detector")
        cls = {"grounding-dino": GroundingDino, "owlv2": Owlv2, "clipseg": ClipSeg}.get(kind)
        if cls is None:
            raise VitsamError(
                f"{name}: not a detector (a folder or hub id of a detector model is needed)"
            )
        from transformers import AutoProcessor

        processor = with_hub_errors(name, lambda: AutoProcessor.from_pretrained(source))
        model = with_hub_errors(name, lambda: cls.model_class().from_pretrained(source))
        return cls(name, model, processor, device, dtype)

    def _inputs(self, **kwargs) -> dict:
        inputs = self.processor(return_tensors="pt", **kwargs)
        return {
            k: v.to(self.device, self.dtype if v.is_floating_point() else None)
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }

    def detect(
        self, image: Image.Image, phrases: list[str], box_threshold: float, text_threshold: float
    ) -> list[Detection]:
        raise NotImplementedError


class GroundingDino(Detector):
    """One pass for all phrases; each box is labelled with the phrase whose tokens score best."""

    kind = "grounding-dino"

    @staticmethod
    def model_class():
        from transformers import AutoModelForZeroShotObjectDetection

        return AutoModelForZeroShotObjectDetection

    def _phrase_spans(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Token positions of each phrase, between [CLS], '.' and [SEP]."""
        tok = self.processor.tokenizer
        stops = {
            tok.cls_token_id,
            tok.sep_token_id,
            tok.convert_tokens_to_ids("."),
            tok.pad_token_id,
        }
        spans, current = [], []
        for i, t in enumerate(input_ids.tolist()):
            if t in stops:
                if current:
                    spans.append(torch.tensor(current))
                current = []
            else:
                current.append(i)
        return spans

    @torch.inference_mode()
    def detect(self, image, phrases, box_threshold, text_threshold):
        text = ". ".join(phrases) + "."
        limit = getattr(self.model.config, "max_text_len", 256)
        n_tokens = len(self.processor.tokenizer(text)["input_ids"])
        if n_tokens > limit:
            raise VitsamError(
                f"prompt is {n_tokens} tokens, over the detector's limit of {limit}: use fewer phrases"
            )
        inputs = self._inputs(images=image, text=text)
        out = self.model(**inputs)
        probs = out.logits[0].float().sigmoid()  # (queries, max_text_len)
        spans = self._phrase_spans(inputs["input_ids"][0].cpu())
        labels = (
            phrases
            if len(spans) == len(phrases)
            else [self.processor.tokenizer.decode(inputs["input_ids"][0][s]) for s in spans]
        )
        per_phrase = torch.stack([probs[:, s.to(probs.device)].max(-1).values for s in spans], 1)
        score = probs.max(-1).values
        best_p, best = per_phrase.max(-1)
        keep = (score > box_threshold) & (best_p > text_threshold)
        w, h = image.size
        cx, cy, bw, bh = out.pred_boxes[0].float().unbind(-1)
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        boxes = boxes * torch.tensor([w, h, w, h], device=boxes.device)
        return _detections(boxes[keep], score[keep], [labels[i] for i in best[keep].tolist()], w, h)


class Owlv2(Detector):
    kind = "owlv2"

    @staticmethod
    def model_class():
        from transformers import Owlv2ForObjectDetection

        return Owlv2ForObjectDetection

    @torch.inference_mode()
    def detect(self, image, phrases, box_threshold, text_threshold):
        inputs = self._inputs(text=[phrases], images=image, padding=True, truncation=True)
        out = self.model(**inputs)
        w, h = image.size
        side = max(w, h)  # OWLv2 pads the image to a square before resizing
        res = self.processor.post_process_grounded_object_detection(
            outputs=out, threshold=box_threshold, target_sizes=[(side, side)]
        )[0]
        labels = [phrases[int(i)] for i in res["labels"]]
        return _detections(res["boxes"].float(), res["scores"].float(), labels, w, h)


class ClipSeg(Detector):
    """CLIPSeg's heat map per phrase, thresholded; each connected region becomes a box."""

    kind = "clipseg"
    min_area = 0.001  # regions under this share of the image are noise

    @staticmethod
    def model_class():
        from transformers import CLIPSegForImageSegmentation

        return CLIPSegForImageSegmentation

    @torch.inference_mode()
    def detect(self, image, phrases, box_threshold, text_threshold):
        inputs = self._inputs(text=phrases, images=[image] * len(phrases), padding=True)
        logits = self.model(**inputs).logits.float()
        heat = logits.view(len(phrases), 1, *logits.shape[-2:]).sigmoid()  # (P, 1, h, w)
        w, h = image.size
        boxes, scores, labels = [], [], []
        for phrase, hm in zip(phrases, heat):
            regions = connected_components(hm[0] > box_threshold)
            for r in range(1, int(regions.max()) + 1):
                m = regions == r
                if m.float().mean() < self.min_area:
                    continue
                ys, xs = torch.nonzero(m, as_tuple=True)
                sy, sx = h / m.shape[0], w / m.shape[1]
                boxes.append(
                    [xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy]
                )
                scores.append(hm[0][m].max())
                labels.append(phrase)
        if not boxes:
            return []
        return _detections(torch.tensor(boxes), torch.stack(scores), labels, w, h)


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """4-connected labels 1..K of a (H, W) bool mask (0 background), by max propagation."""
    H, W = mask.shape
    ids = torch.arange(1, H * W + 1, dtype=torch.float32, device=mask.device).view(1, 1, H, W)
    lab = torch.where(mask.view(1, 1, H, W), ids, torch.zeros_like(ids))
    cross = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool, device=mask.device)
    while True:
        patches = F.unfold(lab, 3, padding=1).view(9, H, W)[cross.flatten()]
        new = torch.where(mask, patches.max(0).values, torch.zeros_like(lab[0, 0]))[None, None]
        if torch.equal(new, lab):
            break
        lab = new
    values, dense = torch.unique(lab, return_inverse=True)
    return dense.view(H, W) + int(values[0] != 0)  # no background: the first label is 1


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
