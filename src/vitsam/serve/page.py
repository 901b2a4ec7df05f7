"""The web page (Gradio): upload an image, type a prompt, see the overlay and detections.

It calls the service in the same process, not the HTTP API.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from vitsam.errors import VitsamError
from vitsam.images import example_images
from vitsam.seg.request import BOX_THRESHOLD, TEXT_THRESHOLD
from vitsam.serve.service import SegmentService


def build_page(service: SegmentService):
    import gradio as gr

    from vitsam.seg.results import save

    def run(image, prompt, box_threshold, text_threshold, detector, segmenter, negative=""):
        if image is None:
            raise gr.Error("Upload an image first.")
        try:
            result = service.segment(image, prompt=prompt, box_threshold=box_threshold,
                                     text_threshold=text_threshold, detector=detector,
                                     segmenter=segmenter, negative=negative or "")  # fmt: skip
        except VitsamError as e:
            raise gr.Error(str(e)) from None
        rows = [[d.label, round(d.score, 3), [round(v, 1) for v in d.box], round(d.mask_score, 3), d.area]
                for d in result.detections]  # fmt: skip
        out = Path(tempfile.mkdtemp(prefix="vitsam-"))
        files = save(result, image, out, "segmentation", ("masks", "json"))
        return result.overlay(image), rows, [str(f) for f in files]

    with gr.Blocks(title="vitsam: text-prompted segmentation") as page:
        gr.Markdown("## vitsam: text-prompted segmentation\nUpload an image, name what to find "
                    "(phrases separated by '.' or ','), press **Segment**.")  # fmt: skip
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="pil",
                    label="Image",
                    sources=["upload", "clipboard"],
                    elem_id="input-image",
                )
                prompt = gr.Textbox(
                    label="Prompt", placeholder="cat. remote control", elem_id="prompt"
                )
                negative = gr.Textbox(
                    "",
                    label="Not these (negative phrases)",
                    placeholder="toy cat. poster of a cat",
                    info="a detection that these describe better, or that overlaps one of "
                    "theirs, is dropped",
                    elem_id="negative",
                )
                with gr.Row():
                    box_t = gr.Slider(0.0, 1.0, BOX_THRESHOLD, step=0.01, label="Box threshold")
                    text_t = gr.Slider(0.0, 1.0, TEXT_THRESHOLD, step=0.01, label="Text threshold")
                with gr.Row():
                    detector = gr.Dropdown(
                        service.detectors, value=service.detectors[0], label="Detector"
                    )
                    segmenter = gr.Dropdown(
                        service.segmenters, value=service.segmenters[0], label="Segmenter"
                    )
                button = gr.Button("Segment", variant="primary", elem_id="segment-button")
            with gr.Column():
                overlay = gr.Image(
                    type="pil", label="Overlay", interactive=False, elem_id="overlay"
                )
                table = gr.Dataframe(headers=["label", "score", "box", "mask score", "area"],
                                     label="Detections", interactive=False, elem_id="detections")  # fmt: skip
                files = gr.File(label="Masks and JSON", file_count="multiple", elem_id="downloads")
        examples = example_images()
        if examples:
            gr.Examples([[str(e), e.stem] for e in examples], inputs=[image, prompt])
        button.click(
            run,
            [image, prompt, box_t, text_t, detector, segmenter, negative],
            [overlay, table, files],
        )
    return page
