"""SAM 3 for images: a noun phrase in, every matching instance out (box, score, mask).

SAM 3 ("SAM 3: Segment Anything with Concepts", Carion et al., Meta 2025) is its own
detector: a DETR-style decoder over a shared vision backbone, scored against the phrase,
with a mask head and a presence token. Through transformers' `Sam3Model`: the image is
encoded once (`get_vision_features`), the phrases once as a batch (`get_text_features`),
then the decoder runs per phrase on the shared features. Images are PIL RGB; boxes come back
as XYXY pixels of that image, masks (H, W) bool.

SAM 3 LiteText (`sam3-lite`; Zeng et al. 2026, "SAM3-LiteText: An Anatomical Study of the
SAM3 Text Encoder for Efficient Vision-Language Segmentation") is SAM 3 with its 353.7M
text encoder replaced by a distilled MobileCLIP student (S0: 42.5M). It has the same
interface (`Sam3LiteTextModel`, `Sam3Processor`), so it runs here unchanged.
"""

from __future__ import annotations

import torch
from PIL import Image

from vitsam.errors import VitsamError
from vitsam.seg.mixed_precision import Mixed
from vitsam.seg.registry import SEGMENTERS, resolve, with_hub_errors
from vitsam.seg.request import no_box_prompts
from vitsam.seg.results import Detection

MAX_TOKENS = 32  # SAM 3's text encoder context (the processor pads every phrase to it)


class Sam3Segmenter(Mixed):
    """Text-native segmenter: `detect(image, phrases, ...)` returns detections with masks.

    It stands in both roles of a TextSegmenter (detector and segmenter), so a pipeline with
    SAM 3 has no separate detector. `mask_score` is the instance score (SAM 3 has no
    per-mask IoU head on this path).
    """

    kind = "sam3"
    text_native = True  # finds objects from the text: no detector before it

    def __init__(self, name: str, model, processor, device: torch.device, dtype: torch.dtype):
        self.name, self.processor = name, processor
        self.model = self.place(model, device, dtype)  # fp32 weights, `dtype` under autocast
        self.mask_threshold = 0.5  # on the mask probability, as transformers' post-processing

    @staticmethod
    def from_pretrained(
        name: str, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> Sam3Segmenter:
        """`sam3` (facebook/sam3), `sam3-lite`, a hub id, or a folder saved by save_pretrained.

        A `sam3_video` folder (the hub layout: detector + tracker) loads its detector half;
        a `sam3_lite_text` one loads as `Sam3LiteTextModel`. Raises VitsamError for another
        model type, or a model missing offline.
        """
        from transformers import AutoConfig, Sam3Processor

        kind, source = resolve(name, SEGMENTERS, "segmenter")
        if kind != "sam3":
            raise VitsamError(f"{name}: not a SAM 3 model (model kind {kind!r})")
        config = with_hub_errors(name, lambda: AutoConfig.from_pretrained(source))
        processor = with_hub_errors(name, lambda: Sam3Processor.from_pretrained(source))
        model = with_hub_errors(name, lambda: image_model_class(config).from_pretrained(source))
        return Sam3Segmenter(name, model, processor, device, dtype)

    @torch.inference_mode()
    def detect(
        self,
        image: Image.Image,
        phrases: list[str],
        box_threshold: float,
        text_threshold: float = 0.0,
    ) -> list[Detection]:
        """Every instance of every phrase scoring over `box_threshold`, highest score first.

        The score is SAM 3's: sigmoid(query logit) x sigmoid(presence logit), in [0, 1].
        `text_threshold` is unused (each query is scored against one whole phrase) and is
        accepted so SAM 3 answers the detector interface.
        """
        tokens = self.processor.tokenizer(
            phrases, padding="max_length", max_length=MAX_TOKENS, return_tensors="pt"
        )
        if tokens["input_ids"].shape[1] > MAX_TOKENS:
            longest = max(phrases, key=len)
            raise VitsamError(
                f"phrase {longest!r} is over SAM 3's {MAX_TOKENS} tokens: shorten it"
            )
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]
        ids = tokens["input_ids"].to(self.device)
        attention = tokens["attention_mask"].to(self.device)
        found = []
        with self.autocast():
            vision = self.model.get_vision_features(pixel_values=pixels.to(self.device))
            text = self.model.get_text_features(input_ids=ids, attention_mask=attention)
            for i, phrase in enumerate(phrases):  # the decoder per phrase, on shared features
                one = _slice(text, i)  # text.pooler_output is (P, 32, D): all phrases, one pass
                out = self.model(
                    vision_embeds=vision, text_embeds=one, attention_mask=attention[i : i + 1]
                )
                found += self._instances(out, phrase, image, box_threshold)
        return sorted(found, key=lambda d: -d.score)

    def _instances(self, out, phrase: str, image: Image.Image, threshold: float) -> list[Detection]:
        w, h = image.size
        res = self.processor.post_process_instance_segmentation(
            _float(out), threshold=threshold, mask_threshold=self.mask_threshold, target_sizes=[(h, w)]
        )[0]
        found = []
        for box, score, mask in zip(res["boxes"].tolist(), res["scores"].tolist(), res["masks"]):
            x1, y1, x2, y2 = max(0.0, box[0]), max(0.0, box[1]), min(w, box[2]), min(h, box[3])
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            found.append(
                Detection(phrase, float(score), (x1, y1, x2, y2), mask.bool().cpu().numpy(), float(score))
            )
        return found

    @torch.inference_mode()
    def detect_like(self, image, examples, label, box_threshold, text=None):
        """Every instance like the positive boxes and unlike the negative ones, through
        SAM 3's geometric prompt (exemplar boxes labelled 1 or 0, `input_boxes` +
        `input_boxes_labels`, with the text "visual" as the processor supplies for
        box-only prompts, or `text` beside negative boxes; Carion et al. 2025, "SAM 3").

        SAM 3 takes exemplar boxes on the image it segments. References in other images
        are placed beside the image on one canvas (references left to right, the image
        last), each box on its reference, and only instances on the image's part are
        kept, shifted back: one SAM 3 pass on the wider canvas, which SAM 3 resizes to its
        1008x1008 input, so with one reference each half gets about half the resolution.
        A box's own instance (same image) is kept: it is one of the objects asked for.
        """
        w, h = image.size
        others: list[Image.Image] = []  # distinct references other than the image
        for reference, _, _ in examples:
            if reference is not image and all(reference is not o for o in others):
                others.append(reference)
        starts, offset = [], 0
        for o in others:
            starts.append(offset)
            offset += o.width
        canvas = image
        if others:
            canvas = Image.new("RGB", (offset + w, max(h, *(o.height for o in others))))
            for o, x in zip(others, starts):
                canvas.paste(o, (x, 0))
            canvas.paste(image, (offset, 0))
        boxes, labels = [], []
        for reference, (x1, y1, x2, y2), positive in examples:
            dx = offset if reference is image else starts[next(
                i for i, o in enumerate(others) if o is reference)]  # fmt: skip
            boxes.append([x1 + dx, y1, x2 + dx, y2])
            labels.append(int(positive))
        inputs = self.processor(images=canvas, text=text, input_boxes=[boxes],
                                input_boxes_labels=[labels], return_tensors="pt")  # fmt: skip
        given = {k: v.to(self.device) for k, v in inputs.items() if k != "original_sizes"}
        given["pixel_values"] = given["pixel_values"].float()
        given["input_boxes"] = given["input_boxes"].float()
        with self.autocast():
            out = self.model(**given)
        found = []
        for d in self._instances(out, label, canvas, box_threshold):
            x1, y1, x2, y2 = d.box
            if offset and (x1 + x2) / 2 < offset:  # an instance on a reference
                continue
            x1, x2 = max(0.0, x1 - offset), min(float(w), x2 - offset)
            y2 = min(float(h), y2)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            mask = d.mask[:h, offset : offset + w]
            found.append(Detection(label, d.score, (x1, y1, x2, y2), mask=mask, mask_score=d.score))
        return sorted(found, key=lambda d: -d.score)

    def set_image(self, image: Image.Image) -> None:
        """SAM 3 takes no box prompts here: raises VitsamError saying what does."""
        raise no_box_prompts(self.name)


def image_model_class(config):
    """`Sam3LiteTextModel` for a SAM 3 LiteText config (alone, or as the detector of a
    `sam3_video` one), else `Sam3Model`."""
    from transformers import Sam3LiteTextModel, Sam3Model

    if config.model_type == "sam3_video":
        config = config.detector_config
    return Sam3LiteTextModel if config.model_type == "sam3_lite_text" else Sam3Model


def _slice(text, i: int):
    """The text-encoder output of phrase i alone, as Sam3Model takes it (`pooler_output`)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return BaseModelOutputWithPooling(pooler_output=text.pooler_output[i : i + 1])


def _float(out):
    """The outputs post-processing reads, in fp32 on the CPU (bf16 runs give bf16 logits)."""
    for key in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits"):
        if out.get(key) is not None:
            out[key] = out[key].float().cpu()
    return out
