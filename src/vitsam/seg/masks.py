"""SAM and SAM 2 behind one stateful predictor: `set_image` once, then `predict(boxes)`.

Boxes are XYXY pixels of the image given to `set_image`; masks come back (N, H, W) bool at
that image's size, with the model's predicted IoU per mask.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vitsam.errors import VitsamError
from vitsam.seg.registry import SEGMENTERS, resolve, with_hub_errors


class MaskPredictor:
    def __init__(self, name: str, kind: str, model, processor, device, dtype) -> None:
        self.name, self.kind = name, kind
        self.model, self.processor = model.eval().to(device, dtype), processor
        self.device, self.dtype = device, dtype
        self._embeddings = None
        self._size: tuple[int, int] | None = None  # (H, W) of the current image
        self._inputs: dict = {}
        self._image: Image.Image | None = None

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

            model_cls = _model_class(kind)
            processor = with_hub_errors(name, lambda: AutoProcessor.from_pretrained(source))
            model = with_hub_errors(name, lambda: model_cls.from_pretrained(source))
        return MaskPredictor(name, kind, model, processor, device, dtype)

    @torch.inference_mode()
    def set_image(self, image: Image.Image) -> None:
        """Compute the image embedding once (the expensive part)."""
        inputs = self.processor(images=image, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        self._embeddings = self.model.get_image_embeddings(pixels)
        self._size = (image.height, image.width)
        self._inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}
        self._image = image if self.kind == "sam" else None  # SAM's processor needs it for boxes

    @torch.inference_mode()
    def predict(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All boxes in one decoder pass: (N, 4) XYXY pixels -> masks (N, H, W) bool, scores (N,)."""
        if self._embeddings is None:
            raise VitsamError("MaskPredictor.predict called before set_image: set an image first")
        h, w = self._size
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros((0, h, w), dtype=bool), np.zeros(0, dtype=np.float32)
        if self.kind == "sam2":
            prompt = self.processor(
                input_boxes=[boxes.tolist()], original_sizes=[[h, w]], return_tensors="pt"
            )
        else:
            prompt = self.processor(
                images=self._image, input_boxes=[boxes.tolist()], return_tensors="pt"
            )
        input_boxes = prompt["input_boxes"].to(self.device, self.dtype)
        out = self.model(
            image_embeddings=self._embeddings, input_boxes=input_boxes, multimask_output=False
        )
        extra = [self._inputs["reshaped_input_sizes"]] if self.kind == "sam" else []
        masks = self.processor.post_process_masks(
            out.pred_masks.float().cpu(), self._inputs["original_sizes"], *extra
        )[0]
        scores = out.iou_scores.float().cpu()[0, :, 0]
        return masks[:, 0].numpy().astype(bool), scores.numpy()


def _model_class(kind: str):
    import transformers

    return {"sam": transformers.SamModel, "sam2": transformers.Sam2Model}[kind]
