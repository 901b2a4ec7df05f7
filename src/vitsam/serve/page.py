"""The web page (Gradio): upload an image, type a prompt, see the overlay and detections.

It calls the service in the same process, not the HTTP API.
"""

import tempfile
from pathlib import Path

from vitsam.errors import VitsamError
from vitsam.images import example_images
from vitsam.seg.request import BOX_THRESHOLD, TEXT_THRESHOLD
from vitsam.serve.service import SegmentService

OBJECT, BACKGROUND = "object", "background"


def mark_clicks(image, clicks, radius: int = 4):
    """The clicks drawn on the overlay: green on the object, red on the background."""
    from PIL import ImageDraw

    if not clicks:
        return image
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for x, y, on in clicks:
        colour = (40, 220, 60) if on else (230, 40, 40)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline="white")
    return image


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
        return answer(image, result)

    def answer(image, result, clicks=()):
        rows = [[d.label, round(d.score, 3), [round(v, 1) for v in d.box], round(d.mask_score, 3), d.area]
                for d in result.detections]  # fmt: skip
        out = Path(tempfile.mkdtemp(prefix="vitsam-"))
        files = save(result, image, out, "segmentation", ("masks", "json"))
        return mark_clicks(result.overlay(image), clicks), rows, [str(f) for f in files]

    def click(image, clicks, kind, segmenter, evt: gr.SelectData):
        """A click on the overlay: one more point, SAM run again on the same embedding."""
        if image is None:
            raise gr.Error("Upload an image first.")
        clicks = [*clicks, [int(evt.index[0]), int(evt.index[1]), int(kind == OBJECT)]]
        try:
            result = service.segment(image, points=clicks, segmenter=segmenter)
        except VitsamError as e:
            raise gr.Error(str(e)) from None
        return *answer(image, result, clicks), clicks

    def fresh(image):
        """A new image: no clicks yet, and the overlay shows it so that it can be clicked."""
        return image, [], []

    with gr.Blocks(title="vitsam: text-prompted segmentation") as page:
        gr.Markdown("## vitsam: text-prompted segmentation\nUpload an image, name what to find "
                    "(phrases separated by '.' or ','), press **Segment**. Or click on the "
                    "overlay: each click marks the object (or the background) and SAM answers "
                    "with one mask, without encoding the image again.")  # fmt: skip
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
                with gr.Row():
                    kind = gr.Radio([OBJECT, BACKGROUND], value=OBJECT, elem_id="click-kind",
                                    label="A click on the overlay marks")  # fmt: skip
                    clear = gr.Button("Clear clicks", elem_id="clear-clicks")
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
        clicks = gr.State([])
        button.click(
            run,
            [image, prompt, box_t, text_t, detector, segmenter, negative],
            [overlay, table, files],
        )
        overlay.select(click, [image, clicks, kind, segmenter], [overlay, table, files, clicks])
        image.upload(fresh, [image], [overlay, table, clicks])
        clear.click(fresh, [image], [overlay, table, clicks])
    return page
