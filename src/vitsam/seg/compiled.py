"""`--runtime openvino`: the detector and the image encoder as compiled OpenVINO graphs,
converted once per model, input shape and prompt length and cached on disk.

A folder run pays the conversion once, then every image runs the compiled graphs; eager
PyTorch does the rest (text tokens, prompt encoder and mask decoder, post-processing).
What is converted, from the loaded torch modules with `openvino.convert_model`:

- Grounding DINO: the whole detector. Its text masks (`generate_masks_with_special_tokens_
  and_transfer_map`: torch.isin, cummax and cummin, which OpenVINO cannot convert) are
  computed in torch and fed to the graph as inputs, and `torch.special.logit` converts
  through a conversion rule of its definition, log(x / (1 - x)) of x clamped to
  [eps, 1 - eps] (`logit_rules`).
- OmDet-Turbo: its vision backbone (Swin-T), swapped into the model as a module; its
  text tower keeps its own cache of phrase embeddings.
- SAM, SAM 2, EdgeTAM: the image encoder (`get_image_embeddings`), at the processor's
  fixed input size.

Input shapes are fixed in a graph (transformers' deformable attention loops over the
feature-map sizes in Python), so Grounding DINO's inputs (the processor's: shortest side
800, longest at most 1333) are padded up on each side to the nearest of a few sides, the
processed sides of the common aspect ratios (`bucket_sides`: 666, 750, 800, 1067, 1200,
1333 at the default size), with the pixel mask marking the padding, as DETR-style models
batch images of different sizes. A folder of many sizes then needs a few graphs, not one
per size, and a 4:3 photo runs unpadded.

The cache (`VITSAM_CACHE`, default ~/.cache/vitsam, under openvino/) holds one folder per
graph: the graph (graph.xml, graph.bin) and meta.json, which records the package versions
it was made with. A graph made with other versions, or damaged, is deleted and converted
again, never used. The graphs run in fp32 (`INFERENCE_PRECISION_HINT` f32) so that they
agree with eager fp32. A model with no conversion here, or whose conversion fails, runs
eagerly, said in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitsam.errors import VitsamError

log = logging.getLogger("vitsam")

RUNTIMES = ("torch", "openvino")
INSTALL = "pip install 'vitsam[openvino]' (in a clone: pip install -e '.[openvino]')"
F32 = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
# The aspect ratios (short / long side) whose processed sides are the padding buckets
ASPECTS = (1, 3 / 4, 2 / 3, 9 / 16, 1 / 2)
_TRACING = threading.Lock()  # the scoped patch below holds for one conversion at a time


def require_openvino():
    """The openvino module; VitsamError with the install line when it is not installed."""
    try:
        import openvino
    except ImportError:
        raise VitsamError(f"--runtime openvino needs OpenVINO: {INSTALL}") from None
    return openvino


def cache_root() -> Path:
    """Where compiled graphs are kept: $VITSAM_CACHE/openvino, else ~/.cache/vitsam/openvino."""
    base = (
        os.environ.get("VITSAM_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitsam"
    )
    return Path(base) / "openvino"


def versions() -> dict[str, str]:
    """The package versions a graph depends on (a change in any rebuilds it): OpenVINO,
    torch, transformers, vitsam, and timm (the edge models' backbones) where installed."""
    import openvino
    import transformers

    import vitsam

    made = {"openvino": openvino.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "vitsam": vitsam.__version__}  # fmt: skip
    with contextlib.suppress(ImportError):
        import timm

        made["timm"] = timm.__version__
    return made


def fingerprint(model: nn.Module) -> str:
    """A digest of a model's config and weights (each tensor's name, shape, sum and
    absolute sum): another checkpoint in the same folder is another model."""
    digest = hashlib.sha256(model.config.to_json_string().encode())
    with torch.no_grad():
        for name, t in model.state_dict().items():  # one tensor at a time: no copy of them all
            t = t.detach().float()
            sums = f"{t.sum(dtype=torch.float64).item():.9e} {t.abs().sum(dtype=torch.float64).item():.9e}"
            digest.update(f"{name}{tuple(t.shape)}{sums}".encode())
    return digest.hexdigest()[:24]


class GraphCache:
    """Compiled graphs on disk; `converted` and `loaded` count what each lookup did."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else cache_root()
        self.converted = self.loaded = 0

    def compiled(self, what: str, key: dict, convert: Callable[[], object]):
        """The compiled graph of `key` (model fingerprint, part, shapes): from the cache when
        it was made with these package versions, else `convert()`ed (an openvino.Model),
        saved and compiled. None when the conversion fails: said in one line, and the
        caller runs the part eagerly. `what` names it in messages."""
        import openvino as ov

        folder = (
            self.root / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        )
        core, made = ov.Core(), versions()
        meta = folder / "meta.json"
        if meta.exists():
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                if json.loads(meta.read_text()).get("versions") == made:
                    graph = core.compile_model(core.read_model(folder / "graph.xml"), "CPU", F32)
                    self.loaded += 1
                    return graph
            log.info("%s: the cached graph was made with other package versions or is damaged: "
                     "converting it again", what)  # fmt: skip
            shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        try:
            graph = convert()
        except Exception as e:  # any failure of the converter: the part stays eager
            reason = (str(e).strip().splitlines() or [""])[0][:160]
            log.warning("%s cannot be converted to OpenVINO (%s: %s): it runs eagerly",
                        what, type(e).__name__, reason)  # fmt: skip
            return None
        self.converted += 1
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        try:  # written aside, then renamed into place: a reader never sees half a graph
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            ov.save_model(graph, partial / "graph.xml", compress_to_fp16=False)
            (partial / "meta.json").write_text(
                json.dumps({"what": what, "key": key, "versions": made})
            )
            with contextlib.suppress(OSError):  # another process may have finished it first
                partial.rename(folder)
            log.info("%s: converted to OpenVINO in %.0f s (cached in %s)", what,
                     time.perf_counter() - t0, self.root)  # fmt: skip
        except OSError as e:
            log.warning("%s: converted, but the graph cannot be cached in %s (%s): set "
                        "VITSAM_CACHE to a writable folder", what, self.root, e.strerror or e)  # fmt: skip
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return core.compile_model(graph, "CPU", F32)


class Graphs(dict):
    """One part of one model as compiled graphs, by input shape: each converted or loaded
    from the cache at its shape's first use (the weights fingerprinted once); None for a
    shape whose conversion failed, which the caller then runs eagerly."""

    def __init__(self, name: str, part: str, model: nn.Module, cache: GraphCache) -> None:
        super().__init__()
        self.name, self.part, self.model, self.cache = name, part, model, cache
        self.ident: str | None = None

    def graph(self, shape: tuple, convert: Callable[[], object]):
        """The compiled graph for `shape` (None: run eagerly); `convert()` makes it."""
        if shape not in self:
            self.ident = self.ident or fingerprint(self.model)
            key = {"model": self.ident, "part": self.part, "shape": shape}
            self[shape] = self.cache.compiled(f"{self.name} {self.part}", key, convert)
        return self[shape]


def _convert(module: nn.Module, args: tuple[torch.Tensor, ...], extensions=()):
    """`module` traced at the shapes and dtypes of `args`, as an openvino.Model."""
    import openvino as ov

    rules = {"extension": list(extensions)} if extensions else {}
    with torch.no_grad():
        return ov.convert_model(module, example_input=args, **rules,
                                input=[(tuple(a.shape), a.dtype) for a in args])  # fmt: skip


def _run(compiled, args) -> list[torch.Tensor]:
    """A compiled graph on torch inputs; its outputs as torch tensors, in order."""
    res = compiled([a.detach().cpu().numpy() for a in args])
    return [torch.from_numpy(np.array(res[o])) for o in compiled.outputs]


def logit_rules() -> list:
    """Conversion rules for aten::logit and aten::special_logit (torch.special.logit):
    log(x / (1 - x)), x clamped to [eps, 1 - eps] when eps is given, its definition."""
    import openvino.opset13 as ops
    from openvino.frontend.pytorch import ConversionExtension

    def convert(context):
        x = context.get_input(0)
        eps = context.get_values_from_const_input(1, None) if context.get_input_size() > 1 else None
        if eps is not None:
            x = ops.clamp(x, float(eps), 1.0 - float(eps))
        one = ops.constant(np.float32(1.0))
        return [ops.log(ops.divide(x, ops.subtract(one, x))).output(0)]

    return [ConversionExtension(op, convert) for op in ("aten::logit", "aten::special_logit")]


class _Embeddings(nn.Module):
    """A SAM-family model's image encoder as one module: pixels -> its embeddings (tuple)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model.get_image_embeddings(pixel_values)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)


def compile_image_encoder(predictor, cache: GraphCache) -> None:
    """Make a masks.MaskPredictor embed images with a compiled graph (one per input shape)."""
    graphs = Graphs(predictor.name, "image encoder", predictor.model, cache)
    as_list = predictor.kind != "sam"  # SAM gives one tensor, SAM 2 / EdgeTAM a list

    def embed():
        pixels = predictor._pixels.float()
        graph = graphs.graph(tuple(pixels.shape),
                             lambda: _convert(_Embeddings(predictor.model), (pixels,)))  # fmt: skip
        if graph is None:  # not convertible: eager
            return eager()
        out = _run(graph, (pixels,))
        return out if as_list else out[0]

    eager, predictor._embed = predictor._embed, embed


def bucket_sides(shortest: int, longest: int) -> tuple[int, ...]:
    """The sides an image processor resizing to `shortest` (at most `longest`) gives images
    of the ASPECTS: the short side's, the long side's when the short one is `shortest`,
    the short side's when the long one is capped at `longest`. (800, 1333) -> 666, 750,
    800, 1067, 1200, 1333."""
    long_sides = {round(shortest / a) for a in ASPECTS if round(shortest / a) <= longest}
    short_sides = {round(longest * a) for a in ASPECTS if round(longest * a) < shortest}
    return tuple(sorted(long_sides | short_sides | {shortest, longest}))


def bucket(side: int, sides: tuple[int, ...]) -> int:
    """The padded size of a processed side: the nearest of `sides` at or above it (a side
    past the largest is kept)."""
    return next((b for b in sides if b >= side), side)


class _GroundingDinoGraph(nn.Module):
    """Grounding DINO with its text masks as inputs: (logits, pred_boxes)."""

    def __init__(self, model: nn.Module, held: dict) -> None:
        super().__init__()
        self.model, self.held = model, held

    def forward(self, pixel_values, pixel_mask, input_ids, token_type_ids, attention_mask,
                text_self_attention_masks, position_ids):  # fmt: skip
        self.held["masks"] = (text_self_attention_masks, position_ids)
        out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids,
                         token_type_ids=token_type_ids, attention_mask=attention_mask)  # fmt: skip
        return out.logits, out.pred_boxes


@contextlib.contextmanager
def _text_masks_from(held: dict):
    """While Grounding DINO is traced, its module's text-mask helper returns the graph's
    inputs (held["masks"]) instead of computing them with ops OpenVINO lacks. Scoped to
    that module attribute and to one conversion at a time; restored on exit."""
    import transformers.models.grounding_dino.modeling_grounding_dino as gd

    name = "generate_masks_with_special_tokens_and_transfer_map"
    with _TRACING:
        helper = getattr(gd, name)
        setattr(gd, name, lambda *args, **kwargs: held["masks"])
        try:
            yield
        finally:
            setattr(gd, name, helper)


class CompiledGroundingDino:
    """Called as the model is (keyword inputs of its processor), returns what detect()
    reads (`logits`, `pred_boxes`), from a graph per padded shape and prompt length."""

    def __init__(self, detector, cache: GraphCache) -> None:
        self.model = detector.model
        self.graphs = Graphs(detector.name, "detector", detector.model, cache)
        size = detector.processor.image_processor.size
        self.sides = bucket_sides(size["shortest_edge"], size["longest_edge"])

    def __call__(self, **inputs):
        import transformers.models.grounding_dino.modeling_grounding_dino as gd

        pixel_values, pixel_mask = inputs["pixel_values"], inputs["pixel_mask"]
        input_ids = inputs["input_ids"]
        h, w = pixel_values.shape[-2:]
        hb, wb = bucket(h, self.sides), bucket(w, self.sides)
        pixels = torch.zeros((*pixel_values.shape[:-2], hb, wb), dtype=torch.float32)
        pixels[..., :h, :w] = pixel_values
        mask = torch.zeros((pixel_mask.shape[0], hb, wb), dtype=pixel_mask.dtype)
        mask[:, :h, :w] = pixel_mask
        masks = gd.generate_masks_with_special_tokens_and_transfer_map(  # in torch: see above
            input_ids, self.model.model.special_tokens
        )
        args = (pixels, mask, input_ids, inputs["token_type_ids"], inputs["attention_mask"], *masks)
        graph = self.graphs.graph((hb, wb, input_ids.shape[1]), lambda: self._convert(args))
        if graph is None:  # not convertible: eager
            return self.model(**inputs)
        logits, boxes = _run(graph, args)
        return _Outputs(logits=logits, pred_boxes=boxes)

    def _convert(self, args):
        held: dict = {}
        with _text_masks_from(held):
            return _convert(_GroundingDinoGraph(self.model, held), args, logit_rules())


class _Outputs(dict):
    """The model-output fields detect() reads, by attribute and by key."""

    __getattr__ = dict.__getitem__


class CompiledBackbone(nn.Module):
    """A vision backbone's forward (pixels -> feature maps) run as a compiled graph per
    input shape; swapped into the model in place of the backbone."""

    def __init__(self, backbone: nn.Module, graphs: Graphs) -> None:
        super().__init__()
        self.backbone, self.graphs = backbone, graphs

    def forward(self, pixel_values):
        pixels = pixel_values.float()
        graph = self.graphs.graph(tuple(pixels.shape),
                                  lambda: _convert(_Tuple(self.backbone), (pixels,)))  # fmt: skip
        if graph is None:  # not convertible: eager
            return self.backbone(pixel_values)
        return _run(graph, (pixels,))


class _Tuple(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return tuple(self.module(x))


def compile_detector(detector, cache: GraphCache) -> None:
    """Give a detect.Detector its compiled graph where this runtime has one (Grounding
    DINO whole, OmDet-Turbo's vision backbone); others say so in one line and run eagerly."""
    if detector.kind == "grounding-dino":
        detector.compiled = CompiledGroundingDino(detector, cache)
    elif detector.kind == "omdet-turbo":
        model = detector.model  # fingerprinted at first use, its backbone's weights included
        graphs = Graphs(detector.name, "vision backbone", model, cache)
        model.vision_backbone = CompiledBackbone(model.vision_backbone, graphs)
    else:
        log.warning("%s: no OpenVINO conversion for %s detectors here: it runs eagerly",
                    detector.name, detector.kind)  # fmt: skip


def use_openvino(pipeline, cache: GraphCache | None = None) -> GraphCache:
    """Switch a pipeline.TextSegmenter's detector and image encoder to compiled graphs
    (converted at first use, then cached). Returns the cache (its counters say what was
    converted and loaded). Raises VitsamError, with the install line, without OpenVINO."""
    require_openvino()
    cache = cache or GraphCache()
    if pipeline.detector is not None and pipeline.detector is not pipeline.segmenter:
        compile_detector(pipeline.detector, cache)
    if pipeline.segmenter.text_native:
        log.warning(
            "%s: no OpenVINO conversion for SAM 3 here: it runs eagerly", pipeline.segmenter.name
        )
    else:
        compile_image_encoder(pipeline.segmenter, cache)
    return cache
