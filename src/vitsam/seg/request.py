"""The rules of a segmentation request, shared by every way in (the CLI, Python, the HTTP
API, the page, labelling runs and Ray): prompts, boxes, thresholds and their defaults, and
which segmenters read the text themselves.
"""

from __future__ import annotations

import numbers
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitsam.errors import VitsamError

# Grounding DINO's two knobs, at the values its authors' demo uses: a box is kept when its
# best token scores over BOX_THRESHOLD and its phrase over TEXT_THRESHOLD.
BOX_THRESHOLD = 0.35
TEXT_THRESHOLD = 0.25
NMS_IOU = 0.0  # IoU for NMS across phrases; 0 = off
MAX_DETECTIONS = 100  # per image, best first
MAX_DETECTIONS_LIMIT = 1000  # the most one HTTP request may ask for
NEGATIVE_IOU = 0.5  # a detection overlapping a negative phrase's detection this much goes
# Phrases are separated by periods (Grounding DINO's convention), commas (how people
# write lists) and line breaks.
SEPARATORS = re.compile(r"[.,]")
# Segmenter kinds (registry.SEGMENTERS) that find objects from the text themselves, so no
# detector runs before them and box prompts do not apply.
TEXT_NATIVE_KINDS = frozenset({"sam3"})


def normalize_text(text: str) -> str:
    """NFKC; line breaks become '.'; other control and format characters (zero-width space,
    BOM, soft hyphen, ...) are dropped, so invisible characters cannot change a prompt."""
    text = ".".join(unicodedata.normalize("NFKC", text).splitlines())
    return "".join(
        " " if c.isspace() else c
        for c in text
        if c.isspace() or not unicodedata.category(c).startswith("C")
    )


def split_prompt(prompt: str) -> list[str]:
    """'Cat, remote control.' -> ['cat', 'remote control']: phrases are separated by '.',
    ',' or line breaks; lower-case, normalised (see normalize_text), no empties or repeats.

    Raises VitsamError when no phrase is left.
    """
    if not isinstance(prompt, str):
        raise VitsamError(f"a prompt is a string of phrases, not a {type(prompt).__name__}")
    phrases = [" ".join(p.split()).lower() for p in SEPARATORS.split(normalize_text(prompt))]
    phrases = list(dict.fromkeys(p for p in phrases if p))
    if not phrases:
        raise VitsamError("empty prompt: give at least one phrase, e.g. 'cat. remote control'")
    return phrases


def check_boxes(boxes, size: tuple[int, int] | None = None) -> np.ndarray:
    """XYXY pixel boxes, as every interface takes them -> (N, 4) float64.

    `boxes` must be a list of [X1, Y1, X2, Y2] lists of finite numbers (or an (N, 4)
    array or tensor) with X2 > X1 and Y2 > Y1. With the image's `size` (W, H), boxes are clamped
    to it ([-20, -20, 100, 100] -> [0, 0, 100, 100]), and a box wholly outside it is an
    error. Raises VitsamError saying which rule a box breaks.
    """
    shape_error = VitsamError(
        "boxes must be a list of [X1, Y1, X2, Y2] boxes in pixels, e.g. [[10, 20, 200, 180]]"
    )
    if hasattr(boxes, "__array__"):  # numpy arrays, torch tensors
        boxes = np.asarray(boxes)
        if boxes.dtype.kind not in "iuf" or boxes.ndim != 2 or boxes.shape[1] != 4:
            raise shape_error
    elif not isinstance(boxes, (list, tuple)) or not all(
        isinstance(b, (list, tuple))
        and len(b) == 4
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in b)
        for b in boxes
    ):
        raise shape_error
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise VitsamError("box numbers must be finite: nan and inf are not pixel positions")
    if (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
        raise VitsamError("a box must be X1,Y1,X2,Y2 with X2 > X1 and Y2 > Y1 (pixels)")
    if size is None:
        return boxes
    w, h = size
    clamped = boxes.clip(0, [w, h, w, h])
    outside = (clamped[:, 2] <= clamped[:, 0]) | (clamped[:, 3] <= clamped[:, 1])
    if outside.any():
        box = [round(float(v), 2) for v in boxes[outside][0]]
        raise VitsamError(f"box {box} lies wholly outside the {w}x{h} image")
    return clamped


def check_options(
    box_threshold: float | None = None,
    text_threshold: float | None = None,
    nms_iou: float | None = None,
    max_detections: int | None = None,
    negative_iou: float | None = None,
) -> None:
    """Thresholds and NMS IoU in [0, 1], max_detections a count >= 0 (None: not given).
    Raises VitsamError naming the option."""
    for name, v in (("box_threshold", box_threshold), ("text_threshold", text_threshold),
                    ("nms_iou", nms_iou), ("negative_iou", negative_iou)):  # fmt: skip
        if v is not None and not 0.0 <= v <= 1.0:  # False for nan too
            raise VitsamError(f"{name} must be between 0 and 1, got {v}")
    if max_detections is not None and (
        isinstance(max_detections, bool)
        or not isinstance(max_detections, numbers.Integral)
        or max_detections < 0
    ):
        raise VitsamError(f"max_detections must be a count of 0 or more, got {max_detections}")


def check_points(points, size: tuple[int, int] | None = None) -> np.ndarray:
    """Clicks, as every interface takes them: [[X, Y, LABEL], ...] (LABEL 1 = on the object,
    0 = background; [X, Y] alone is 1) -> (K, 3) float64. With the image's `size` (W, H) a
    point must lie on it. Raises VitsamError saying which rule a point breaks."""
    shape_error = VitsamError(
        "points must be a list of [X, Y] or [X, Y, LABEL] (LABEL 1 object, 0 background), "
        "e.g. [[120, 80, 1], [40, 30, 0]]"
    )
    if not isinstance(points, (list, tuple, np.ndarray)) or len(points) == 0:
        raise shape_error
    rows = []
    for p in points:
        if not isinstance(p, (list, tuple, np.ndarray)) or len(p) not in (2, 3) or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in p
        ):
            raise shape_error
        rows.append([*p, 1] if len(p) == 2 else list(p))
    out = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(out).all():
        raise VitsamError("point numbers must be finite: nan and inf are not pixel positions")
    if not np.isin(out[:, 2], (0, 1)).all():
        raise VitsamError("a point's label is 1 (on the object) or 0 (background)")
    if size is not None:
        w, h = size
        off = (out[:, 0] < 0) | (out[:, 0] >= w) | (out[:, 1] < 0) | (out[:, 1] >= h)
        if off.any():
            x, y = (round(float(v), 2) for v in out[off][0, :2])
            raise VitsamError(f"point ({x}, {y}) lies outside the {w}x{h} image")
    return out


def check_clicks(points, boxes=None, hint: str = "") -> np.ndarray:
    """check_points, and at most one box with the clicks (SAM makes one mask from them):
    -> (K, 3) float64. `hint` ends the error (the CLI names its flag). Raises VitsamError."""
    clicks = check_points(points)
    if boxes is not None and len(boxes) > 1:
        raise VitsamError("clicks take at most one box with them" + hint)
    return clicks


def text_native(segmenter: str) -> bool:
    """Whether the segmenter named (short name, hub id, folder) finds objects from text
    itself (SAM 3), so that no detector is loaded for it. Raises VitsamError for a name
    that is no segmenter."""
    from vitsam.seg.registry import SEGMENTERS, resolve

    return resolve(segmenter, SEGMENTERS, "segmenter")[0] in TEXT_NATIVE_KINDS


def no_box_prompts(name: str) -> VitsamError:
    return VitsamError(
        f"{name} finds objects from a text prompt; box prompts need a SAM or SAM 2 segmenter "
        "(e.g. --segmenter sam2.1-tiny)"
    )


def no_negative_exemplars() -> VitsamError:
    return VitsamError(
        "negative exemplars are SAM 3's label-0 boxes: use --segmenter sam3, or leave them out"
    )


def check_box_segmenter(segmenter: str) -> None:
    """Box prompts need a segmenter that takes boxes: raises VitsamError for SAM 3 before
    it loads."""
    if text_native(segmenter):
        raise no_box_prompts(segmenter)



@dataclass(frozen=True)
class Prompt:
    """A request's text, resolved: the phrases the detector is asked for, the class each
    names, the negative phrases, and per-class box thresholds.

    `classes` are the labels results carry (and the dataset's categories), in order: each
    plain phrase of the prompt is its own class, then the class map's classes. Build it
    with `Prompt.parse`.
    """

    classes: tuple[str, ...]
    class_of: dict[str, str]  # every positive phrase -> its class
    negatives: tuple[str, ...] = ()
    box_thresholds: dict[str, float] = field(default_factory=dict)  # class -> threshold
    exemplars: tuple[Exemplar, ...] = ()  # boxed examples; their labels are classes too

    @property
    def phrases(self) -> list[str]:
        """What the detector is asked for: the positive phrases, then the negatives."""
        return [*self.class_of, *self.negatives]

    def threshold(self, label: str, default: float) -> float:
        return self.box_thresholds.get(self.class_of.get(label, label), default)

    def exemplar_groups(self) -> dict[str, list[Exemplar]]:
        """The exemplars by class, in the order given: one geometric prompt per class."""
        groups: dict[str, list[Exemplar]] = {}
        for ex in self.exemplars:
            groups.setdefault(ex.label, []).append(ex)
        return groups

    def beside_text(self) -> set[str]:
        """Classes with negative exemplars and no positive one: their boxes go beside the
        class's phrases (SAM 3 takes text and boxes in one prompt)."""
        return {c for c, group in self.exemplar_groups().items()
                if all(ex.negative for ex in group)}  # fmt: skip

    @classmethod
    def parse(
        cls,
        prompt: str = "",
        classes: Mapping[str, str | Sequence[str]] | None = None,
        negative: str = "",
        box_thresholds: Mapping[str, float] | None = None,
        exemplars: Sequence[Exemplar] = (),
    ) -> Prompt:
        """`prompt` 'cat. dog' (each phrase its own class), `classes` {'cat': ['kitten',
        'tabby cat']} (several phrases, one class), `negative` 'toy cat. poster' (what must
        not be labelled) and `box_thresholds` {'cat': 0.5} (overrides of the default).

        Raises VitsamError for no positive phrase, a class listed twice, a phrase under two
        classes, a negative that is also a positive phrase, an empty class, or a threshold
        for a class the request does not have or outside 0..1. `exemplars` (Exemplar) add
        their labels as classes (one may share a text class's name: both feed it), and
        with them no phrase is needed. A negative exemplar must name a class the request
        has (VitsamError otherwise).
        """
        class_of: dict[str, str] = {}
        order: list[str] = []

        def add(name: str, phrases: list[str]) -> None:
            if name in order:
                raise VitsamError(f"class {name!r} is listed twice: list it once")
            order.append(name)
            for p in phrases:
                if p in class_of:
                    raise VitsamError(
                        f"phrase {p!r} is under both {class_of[p]!r} and {name!r}: keep it in one"
                    )
                class_of[p] = name

        if not isinstance(prompt, str) or prompt.strip():  # split_prompt names a non-string
            for p in split_prompt(prompt):
                add(p, [p])
        if classes is not None and not isinstance(classes, Mapping):
            raise VitsamError("a class map is a mapping of class name to its phrases")
        for raw, phrases in (classes or {}).items():
            name = " ".join(normalize_text(str(raw)).split()).lower()
            if not name:
                raise VitsamError("a class map has an empty class name")
            if isinstance(phrases, str):
                phrases = [phrases]
            if not isinstance(phrases, Sequence) or not phrases:
                raise VitsamError(f"class {name!r} has no phrases: give a list, e.g. [kitten]")
            try:
                add(name, [q for p in phrases for q in split_prompt(str(p))])
            except VitsamError as e:
                raise VitsamError(f"class {name!r}: {e}") from None
        for ex in exemplars:
            if not ex.negative and ex.label not in order:
                order.append(ex.label)
        for ex in exemplars:  # a negative box narrows a class: it needs one to narrow
            if ex.negative and ex.label not in order:
                raise VitsamError(
                    f"negative exemplar of {ex.label!r}, which is not a class here: give it "
                    "the class of a phrase or a positive exemplar ([CLASS=]REF.jpg:...)"
                )
        if not class_of and not any(not ex.negative for ex in exemplars):
            raise VitsamError(
                "empty prompt: give at least one phrase, e.g. 'cat. remote control'"
                + (" (the class map has no classes)" if classes is not None else "")
            )
        negatives = split_prompt(negative) if negative.strip() else []
        for n in negatives:
            if n in class_of:
                raise VitsamError(f"{n!r} is both a phrase and a negative phrase: keep one")
        thresholds = {}
        for raw, value in (box_thresholds or {}).items():
            name = " ".join(normalize_text(str(raw)).split()).lower()
            if name not in order:
                raise VitsamError(
                    f"box threshold for {name!r}, which is not a class here ({', '.join(order)})"
                )
            check_options(box_threshold=value)
            thresholds[name] = float(value)
        return cls(tuple(order), class_of, tuple(negatives), thresholds, tuple(exemplars))

    def to_json(self) -> dict:
        """What results record of the request beyond the prompt text."""
        out: dict = {}
        if any(c != p for p, c in self.class_of.items()):
            out["classes"] = {c: [p for p, k in self.class_of.items() if k == c] for c in self.classes}
        if self.box_thresholds:
            out["box_thresholds"] = dict(self.box_thresholds)
        if self.exemplars:
            out["exemplars"] = [e.to_json() for e in self.exemplars]
        return out


EXEMPLAR = "exemplar"  # the class of an exemplar given without a name


@dataclass(frozen=True)
class Exemplar:
    """One boxed example of what to find: `box` XYXY pixels on the image at `image` (a
    file path, or None: the image being segmented), its matches labelled `label`.

    A `negative` exemplar boxes what its class must not match (SAM 3's label-0 exemplar
    box): it goes into the same geometric prompt as the class's positive exemplars, or
    beside the class's phrases.
    """

    box: tuple[float, float, float, float]
    image: str | None = None
    label: str = EXEMPLAR
    negative: bool = False

    @classmethod
    def parse(cls, text: str, negative: bool = False) -> Exemplar:
        """'[CLASS=]REF.jpg:X1,Y1,X2,Y2' (the CLI's --exemplar, or --neg-exemplar with
        `negative`) -> an Exemplar.

        Raises VitsamError for text of another shape or a bad box (check_boxes' rules).
        """
        label, sep, rest = text.partition("=")
        if not sep or ":" in label or "," in label:  # no class given
            label, rest = EXEMPLAR, text
        path, _, numbers_ = rest.rpartition(":")
        try:
            box = tuple(float(v) for v in numbers_.split(","))
        except ValueError:
            box = ()
        if not path or len(box) != 4:
            raise VitsamError(
                f"exemplar {text!r}: give [CLASS=]REF.jpg:X1,Y1,X2,Y2 (a box in pixels on REF.jpg)"
            )
        check_boxes([list(box)])
        label = " ".join(normalize_text(label).split()).lower() or EXEMPLAR
        return cls(box, path, label, negative)

    @classmethod
    def from_json(cls, value) -> Exemplar:
        """{"box": [x1, y1, x2, y2], "label": "cat", "image": "ref.jpg", "negative": true}
        (image, label and negative optional) -> an Exemplar; raises VitsamError for another
        shape."""
        if not isinstance(value, dict) or "box" not in value:
            raise VitsamError('an exemplar is {"box": [x1, y1, x2, y2], "label": "cat"}')
        box = check_boxes([value["box"]])[0]
        label = " ".join(normalize_text(str(value.get("label") or EXEMPLAR)).split()).lower()
        negative = value.get("negative", False)
        if not isinstance(negative, bool):
            raise VitsamError("an exemplar's 'negative' is true or false")
        return cls(tuple(map(float, box)), value.get("image"), label or EXEMPLAR, negative)

    def to_json(self) -> dict:
        out = {"box": list(self.box), "label": self.label, "image": self.image}
        return {**out, "negative": True} if self.negative else out


def class_threshold(text: str) -> tuple[str, float]:
    """'cat=0.5' -> ('cat', 0.5), '0.4' -> ('', 0.4): a box threshold, a class's or the
    default (its range is check_options'). Raises VitsamError for another shape."""
    name, _, number = text.rpartition("=")
    try:
        return name.strip(), float(number)
    except ValueError:
        raise VitsamError(f"{text!r} is not T or CLASS=T (T a number 0..1)") from None


def load_classes(path: str | Path) -> dict[str, list[str]]:
    """A class map file (YAML or JSON: `cat: [kitten, tabby cat]`) -> {class: phrases}.

    Raises VitsamError for a missing or unreadable file, or what parse_classes refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise VitsamError(f"{path}: no such class map file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise VitsamError(f"{path}: cannot read ({e})") from None
    return parse_classes(text, str(path))


def parse_classes(text: str, source: str = "class map") -> dict[str, list[str]]:
    """YAML or JSON text (`cat: [kitten, tabby cat]`) -> {class: phrases}; `source` names it
    in errors. Raises VitsamError for text that is not YAML, not a mapping, an empty one,
    or a class listed twice (YAML itself would keep the last silently)."""
    import yaml

    class Unique(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        keys = [loader.construct_object(k) for k, _ in node.value]
        twice = next((k for k in keys if keys.count(k) > 1), None)
        if twice is not None:
            raise VitsamError(f"{source}: class {twice!r} is listed twice: list it once")
        return loader.construct_mapping(node)

    Unique.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        data = yaml.load(text, Loader=Unique)  # noqa: S506
    except yaml.YAMLError as e:
        raise VitsamError(f"{source}: not YAML or JSON ({str(e).splitlines()[0]})") from None
    if isinstance(data, dict) and not data or data is None:
        raise VitsamError(f"{source}: the class map is empty: give e.g. 'cat: [kitten, tabby cat]'")
    if not isinstance(data, dict):
        raise VitsamError(f"{source}: a class map is a mapping, e.g. 'cat: [kitten, tabby cat]'")
    return {str(k): v for k, v in data.items()}
