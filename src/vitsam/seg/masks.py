"""SAM and SAM 2 behind one stateful predictor: `set_image` once, then `predict(boxes)`.

Boxes are XYXY pixels of the image given to `set_image`; masks come back (N, H, W) bool at
that image's size, with the model's predicted IoU per mask (a few masks at a time with
`predict_chunks`, so large images never hold every full-size mask at once).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from vitsam.errors import VitsamError
from vitsam.seg.mixed_precision import Fp32Fallback
from vitsam.seg.registry import SEGMENTERS, require_timm, resolve, with_hub_errors

SAM2_KINDS = ("sam2", "edgetam")  # SAM 2's interface: EdgeTAM is SAM 2 with another encoder


class MaskPredictor(Fp32Fallback):
    # Mask pixels upsampled at once when decoding: bounds peak memory on large images
    # (a 6000x4000 image takes 2 masks per chunk, ~200 MB of float32, not 100 masks, ~9 GB).
    chunk_pixels = 2**26
    text_native = False  # segments the boxes it is given

    def __init__(self, name: str, kind: str, model, processor, device, dtype) -> None:
        self.name, self.kind, self.processor = name, kind, processor
        self.model = self.place(model, device, dtype)  # fp32 weights, `dtype` under autocast
        self._embeddings = None
        self._embedded_in: torch.dtype | None = None  # the dtype the embeddings ran in
        self._pixels: torch.Tensor | None = None  # the processed image, fp32 on the CPU
        self._size: tuple[int, int] | None = None  # (H, W) of the current image
        self._inputs: dict = {}
        self._image: Image.Image | None = None
        self._key: tuple | None = None  # which picture the embeddings are of
        self.encoded = 0  # image encoder runs so far (a page click must not add one)

    @staticmethod
    def from_pretrained(
        name: str, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> MaskPredictor:
        """A short name (see registry.SEGMENTERS), hub id, saved folder or original checkpoint."""
        kind, source = resolve(name, SEGMENTERS, "segmenter")
        if kind == "checkpoint":
            from vitsam.seg.checkpoints import load_original

            kind, model, processor = load_original(source)
        else:
            from transformers import AutoProcessor

            require_timm(kind, name)
            model_cls = _model_class(kind)
            processor = with_hub_errors(name, lambda: AutoProcessor.from_pretrained(source))
            model = with_hub_errors(name, lambda: model_cls.from_pretrained(source))
        return MaskPredictor(name, kind, model, processor, device, dtype)

    @torch.inference_mode()
    def set_image(self, image: Image.Image) -> None:
        """Compute the image embedding once (the expensive part). The same picture again
        (same size, mode and pixels: a page re-run after a click) keeps the embedding."""
        key = (image.size, image.mode, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        if key == self._key and self._embeddings is not None and self._embedded_in == self.dtype:
            return
        self.encoded, self._key = self.encoded + 1, None
        inputs = self.processor(images=image, return_tensors="pt")
        self._pixels = inputs["pixel_values"]
        self._embeddings = self.run_finite(self._embed, _tensors)
        self._embedded_in = self.dtype
        self._size = (image.height, image.width)
        self._inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}
        self._image = image if self.kind == "sam" else None  # SAM's processor needs it for boxes
        self._key = key

    def forget(self) -> None:
        """Drop the held embedding: the next set_image encodes, even the same picture (a
        benchmark times the encoder this way)."""
        self._key, self._embeddings = None, None

    def _embed(self):
        """Image embeddings (a tensor for SAM, a list for SAM 2), in the autocast dtype."""
        return self.model.get_image_embeddings(self._pixels.to(self.device, torch.float32))

    @torch.inference_mode()
    def predict(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All boxes: (N, 4) XYXY pixels -> masks (N, H, W) bool, scores (N,).

        Holds every mask at full size: for many boxes on a large image use predict_chunks.
        """
        h, w = self._size or (0, 0)
        parts = list(self.predict_chunks(boxes))
        if not parts:
            return np.zeros((0, h, w), dtype=bool), np.zeros(0, dtype=np.float32)
        return np.concatenate([m for m, _ in parts]), np.concatenate([s for _, s in parts])

    @torch.inference_mode()
    def predict_chunks(self, boxes: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One decoder pass for all (N, 4) XYXY pixel boxes, then the masks upsampled to the
        image a few at a time: yields (masks (k, H, W) bool, IoU scores (k,)) for consecutive
        boxes, k * H * W <= chunk_pixels (k >= 1). Raises VitsamError before set_image."""
        if self._embeddings is None:
            raise VitsamError("MaskPredictor.predict called before set_image: set an image first")
        h, w = self._size
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return
        if self.kind in SAM2_KINDS:
            prompt = self.processor(
                input_boxes=[boxes.tolist()], original_sizes=[[h, w]], return_tensors="pt"
            )
        else:
            prompt = self.processor(
                images=self._image, input_boxes=[boxes.tolist()], return_tensors="pt"
            )

        def run():
            if self._embedded_in != self.dtype:  # after a switch to fp32
                self._embeddings, self._embedded_in = self._embed(), self.dtype
            return self.model(
                image_embeddings=self._embeddings,
                input_boxes=prompt["input_boxes"].to(self.device, torch.float32),
                multimask_output=False,
            )

        out = self.run_finite(run, lambda o: (o.pred_masks, o.iou_scores))
        low_res = out.pred_masks.float().cpu()[0]  # (N, 1, h', w')
        scores = out.iou_scores.float().cpu()[0, :, 0].numpy()
        extra = [self._inputs["reshaped_input_sizes"]] if self.kind == "sam" else []
        step = max(1, self.chunk_pixels // (h * w))
        for i in range(0, len(boxes), step):
            masks = self.processor.post_process_masks(
                [low_res[i : i + step]], self._inputs["original_sizes"], *extra
            )[0]
            yield masks[:, 0].numpy().astype(bool), scores[i : i + step]


    @torch.inference_mode()
    def predict_points(
        self, points: np.ndarray, labels: np.ndarray, box: np.ndarray | None = None
    ) -> tuple[np.ndarray, float]:
        """Clicks on the current image, as SAM's own demo takes them: (K, 2) XY pixel
        points with (K,) labels (1 = object, 0 = background), and at most one XYXY box ->
        one mask (H, W) bool and its predicted IoU.

        One point alone is ambiguous (a part or the whole): the decoder's three masks are
        made and the best-scored kept, as SamPredictor's docs advise; otherwise one mask.
        Raises VitsamError before set_image.
        """
        if self._embeddings is None:
            raise VitsamError("MaskPredictor.predict called before set_image: set an image first")
        h, w = self._size
        points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        prompt_args = {
            "input_points": [[points.tolist()]],  # (image, object, point, XY)
            "input_labels": [[labels.tolist()]],  # (image, object, point)
        }
        if box is not None:
            prompt_args["input_boxes"] = [[np.asarray(box, dtype=np.float32).tolist()]]
        if self.kind in SAM2_KINDS:
            prompt = self.processor(original_sizes=[[h, w]], return_tensors="pt", **prompt_args)
        else:
            prompt = self.processor(images=self._image, return_tensors="pt", **prompt_args)
        several = len(points) == 1 and box is None

        def run():
            if self._embedded_in != self.dtype:  # after a switch to fp32
                self._embeddings, self._embedded_in = self._embed(), self.dtype
            given = {k: prompt[k].to(self.device) for k in prompt_args}
            for k in ("input_points", "input_boxes"):
                if k in given:
                    given[k] = given[k].float()
            return self.model(image_embeddings=self._embeddings, multimask_output=several, **given)

        out = self.run_finite(run, lambda o: (o.pred_masks, o.iou_scores))
        scores = out.iou_scores.float().cpu()[0, 0]  # (masks,)
        best = int(scores.argmax())
        low_res = out.pred_masks.float().cpu()[0, :, best : best + 1]  # (1, 1, h', w')
        extra = [self._inputs["reshaped_input_sizes"]] if self.kind == "sam" else []
        mask = self.processor.post_process_masks([low_res], self._inputs["original_sizes"], *extra)[0]
        return mask[0, 0].numpy().astype(bool), float(scores[best])


def _tensors(embeddings) -> list[torch.Tensor]:
    """SAM's embedding is one tensor, SAM 2's a list of feature maps."""
    return [embeddings] if isinstance(embeddings, torch.Tensor) else list(embeddings)


def _model_class(kind: str):
    import transformers

    return {"sam": transformers.SamModel, "sam2": transformers.Sam2Model,
            "edgetam": transformers.EdgeTamModel}[kind]  # fmt: skip
