"""The web page (Gradio): upload an image, type a prompt, see the overlay and detections;
click or drag on the overlay to prompt SAM directly.

It calls the service in the same process, not the HTTP API. Gradio's image events give
clicks only, so a small script (`GESTURES_JS`, mounted with the page) reads pointer
gestures on the overlay itself: a click is a point (left: on the object; right or
shift-click: background), a drag is a box. It appends the gesture to the JSON list in a
hidden textbox (the page's prompt so far, emptied by a new image or "Clear") and presses
a hidden button; Python reads the whole list, so a gesture made while SAM is still busy
with the one before loses nothing.
"""

import json
import tempfile
from pathlib import Path

from vitsam.errors import VitsamError
from vitsam.images import example_images
from vitsam.seg.request import BOX_THRESHOLD, TEXT_THRESHOLD, class_threshold, parse_classes
from vitsam.serve.service import SegmentService

OBJECT, BACKGROUND = "object", "background"
DRAG_PX = 6  # a pointer moved further than this (screen pixels) between press and release drags a box

GESTURES_JS = """
<script>
(() => {
  const overlay = (e) => e.target.closest && e.target.closest("#overlay img");
  let start = null;
  const pixel = (img, cx, cy) => {  // screen -> image pixels, object-fit: contain as Gradio shows it
    const r = img.getBoundingClientRect();
    const scale = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const left = r.left + (r.width - img.naturalWidth * scale) / 2;
    const top = r.top + (r.height - img.naturalHeight * scale) / 2;
    const clamp = (v, hi) => Math.max(0, Math.min(hi, v));
    return [clamp((cx - left) / scale, img.naturalWidth), clamp((cy - top) / scale, img.naturalHeight)];
  };
  document.addEventListener("pointerdown", (e) => {
    const img = overlay(e);
    if (!img) return;
    e.preventDefault();
    start = {img, x: e.clientX, y: e.clientY, background: e.button === 2 || e.shiftKey};
  }, true);
  document.addEventListener("pointerup", (e) => {
    if (!start) return;
    const s = start;
    start = null;
    const [x1, y1] = pixel(s.img, s.x, s.y), [x2, y2] = pixel(s.img, e.clientX, e.clientY);
    const dragged = Math.hypot(e.clientX - s.x, e.clientY - s.y) > DRAG_PX;
    const gesture = dragged
      ? {box: [Math.min(x1, x2), Math.min(y1, y2), Math.max(x1, x2), Math.max(y1, y2)]}
      : {point: [x1, y1, s.background ? 0 : 1]};
    const field = document.querySelector("#gesture textarea");
    let so_far = [];
    try { so_far = JSON.parse(field.value || "[]"); } catch (err) {}
    field.value = JSON.stringify([...so_far, gesture]);
    field.dispatchEvent(new Event("input", {bubbles: true}));
    setTimeout(() => document.querySelector("#gesture-button").click(), 0);
  }, true);
  for (const kind of ["contextmenu", "dragstart"]) {  // no menu, no image dragged away
    document.addEventListener(kind, (e) => { if (overlay(e)) e.preventDefault(); }, true);
  }
})();
</script>
""".replace("DRAG_PX", str(DRAG_PX))
CSS = "#gesture, #gesture-button {display: none !important}"


def mark_prompts(image, clicks, box=None, radius: int = 4):
    """The clicks and box drawn on the overlay: green on the object, red on the background,
    the box in yellow."""
    from PIL import ImageDraw

    if not clicks and box is None:
        return image
    image = image.copy()
    draw = ImageDraw.Draw(image)
    if box is not None:
        draw.rectangle(tuple(box), outline=(250, 210, 40), width=2)
    for x, y, on in clicks:
        colour = (40, 220, 60) if on else (230, 40, 40)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline="white")
    return image


def read_gestures(text: str, background: bool = False):
    """The script's JSON list of gestures -> (clicks [[X, Y, LABEL], ...], the last box or
    None). `background`: the page's radio says clicks mark the background. Raises
    VitsamError for text that is not such a list."""
    try:
        given = json.loads(text or "[]")
        clicks, box = [], None
        for g in given:
            if "box" in g:
                box = [round(float(v), 1) for v in g["box"]]
            else:
                x, y, on = g["point"]
                clicks.append([int(x), int(y), int(on and not background)])
    except (ValueError, TypeError, KeyError, AttributeError):
        raise VitsamError("the page sent gestures it cannot read: reload it") from None
    return clicks, box


def page_thresholds(text: str) -> dict[str, float]:
    """The page's per-class thresholds, 'cat=0.5, dog=0.3' -> {'cat': 0.5, 'dog': 0.3}.
    Raises VitsamError for a part without a class, or not CLASS=T."""
    found = {}
    for part in text.replace("\n", ",").split(","):
        if part.strip():
            name, value = class_threshold(part)
            if not name:
                raise VitsamError(f"per-class thresholds: {part.strip()!r} has no class: write cat=0.5")
            found[name] = value
    return found


def build_page(service: SegmentService):
    import gradio as gr

    from vitsam.seg.results import save

    def detect(image, prompt, box_threshold, text_threshold, detector, segmenter, negative="",
               classes="", thresholds="", exemplar=None):  # fmt: skip
        """The text request (and the dragged box as an exemplar, for 'find more like it')."""
        if image is None:
            raise gr.Error("Upload an image first.")
        try:
            result = service.segment(
                image, prompt=prompt, box_threshold=box_threshold, text_threshold=text_threshold,
                detector=detector, segmenter=segmenter, negative=negative or "",
                classes=parse_classes(classes, "class map") if (classes or "").strip() else None,
                box_thresholds=page_thresholds(thresholds or "") or None,
                exemplars=[exemplar] if exemplar else None,
            )  # fmt: skip
        except VitsamError as e:
            raise gr.Error(str(e)) from None
        return answer(image, result)

    def like_box(image, said, label, *request):
        box = read_gestures(said)[1]
        if box is None:
            raise gr.Error("Drag a box around an example on the overlay first.")
        return detect(image, *request, exemplar={"box": box, "label": label or "exemplar"})

    def answer(image, result, clicks=(), box=None):
        rows = [[d.label, round(d.score, 3), [round(v, 1) for v in d.box], round(d.mask_score, 3), d.area]
                for d in result.detections]  # fmt: skip
        out = Path(tempfile.mkdtemp(prefix="vitsam-"))
        files = save(result, image, out, "segmentation", ("masks", "json"))
        return mark_prompts(result.overlay(image), clicks, box), rows, [str(f) for f in files]

    def gesture(image, said, kind, segmenter):
        """The clicks (points) and drags (the last one is the box) on the overlay so far:
        SAM runs again on the embedding it holds for this image."""
        if image is None:
            raise gr.Error("Upload an image first.")
        try:
            clicks, box = read_gestures(said, background=kind == BACKGROUND)
            if clicks:
                result = service.segment(image, points=clicks, boxes=[box] if box else None,
                                         segmenter=segmenter)  # fmt: skip
            else:
                result = service.segment(image, boxes=[box], segmenter=segmenter)
        except VitsamError as e:
            raise gr.Error(str(e)) from None
        return answer(image, result, clicks, box)

    def fresh(image):
        """A new image: no clicks or box yet, and the overlay shows it so that it can be clicked."""
        return image, [], ""

    with gr.Blocks(title="vitsam: text-prompted segmentation") as page:
        gr.Markdown("## vitsam: text-prompted segmentation\nUpload an image, name what to find "
                    "(phrases separated by '.' or ','), press **Segment**. Or prompt SAM on "
                    "the overlay: a click marks the object (right- or shift-click: the "
                    "background), a drag draws a box; SAM answers with one mask, without "
                    "encoding the image again. **Find more like the box** looks for objects "
                    "like the boxed one (OWLv2 or SAM 3).")  # fmt: skip
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
                    box_t = gr.Slider(0.0, 1.0, BOX_THRESHOLD, step=0.01, label="Box threshold",
                                      elem_id="box-threshold")  # fmt: skip
                    text_t = gr.Slider(0.0, 1.0, TEXT_THRESHOLD, step=0.01, label="Text threshold")
                with gr.Accordion("Classes and per-class thresholds", open=False):
                    classes = gr.Textbox(
                        "", lines=3, label="Class map (YAML): several phrases, one label",
                        placeholder="cat: [kitten, tabby cat]\ndog: [puppy]",
                        info="one line per class; the labels are the class names, after the "
                        "prompt's phrases", elem_id="classes",
                    )  # fmt: skip
                    thresholds = gr.Textbox(
                        "", label="Per-class box thresholds", placeholder="cat=0.5, dog=0.3",
                        info="override the box threshold for these classes",
                        elem_id="class-thresholds",
                    )  # fmt: skip
                with gr.Row():
                    detector = gr.Dropdown(service.detectors, value=service.detectors[0],
                                           label="Detector", elem_id="detector")  # fmt: skip
                    segmenter = gr.Dropdown(service.segmenters, value=service.segmenters[0],
                                            label="Segmenter", elem_id="segmenter")  # fmt: skip
                button = gr.Button("Segment", variant="primary", elem_id="segment-button")
                with gr.Row():
                    kind = gr.Radio([OBJECT, BACKGROUND], value=OBJECT, elem_id="click-kind",
                                    label="A click on the overlay marks")  # fmt: skip
                    clear = gr.Button("Clear clicks and box", elem_id="clear-clicks")
                with gr.Row():
                    label = gr.Textbox("", label="Class of the boxed example",
                                       placeholder="exemplar", elem_id="exemplar-label")  # fmt: skip
                    like = gr.Button("Find more like the box", elem_id="like-box")
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
        said = gr.Textbox(elem_id="gesture", container=False)  # the script's gestures, JSON
        said_button = gr.Button(elem_id="gesture-button")
        request = [prompt, box_t, text_t, detector, segmenter, negative, classes, thresholds]
        button.click(detect, [image, *request], [overlay, table, files], api_name="run")
        like.click(like_box, [image, said, label, *request], [overlay, table, files])
        said_button.click(gesture, [image, said, kind, segmenter], [overlay, table, files],
                          trigger_mode="always_last")  # each run reads every gesture so far
        image.upload(fresh, [image], [overlay, table, said])
        clear.click(fresh, [image], [overlay, table, said])
    return page
