"""The fused count path on PyTorch (CUDA, or the CPU for tests and as the FP32 reference).

One upload per field: the detector runs on a downscaled copy made on the device, crops are
cut from the full-resolution frame on the device (RoIAlign), and the classifier batch never
goes back to the host; only boxes and probabilities come down. On CUDA the networks run in
FP16 (softmax, box decoding and the ensemble mean in FP32) and are replayed as CUDA graphs:
the detector per input size, the classifier over a few batch buckets padded up to.

Needs torch and torchvision (the train extra); imported only when this backend is chosen.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import nms, roi_align

from edge.analysis.field import FieldOutputs
from edge.analysis.scale import FieldPlan, in_core, plan_field
from edge.engines.bundle import Bundle, ClassifierSpec, DetectorSpec
from edge.engines.graphs import IMAGE_MEAN, IMAGE_STD, DetectorGraph, FusedClassifier, load_graphs
from edge.errors import EngineError

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16"]
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
SIZE_DIVISIBLE = 32  # RetinaNet's transform pads to this; the graph's anchors depend on it


def decode_boxes(
    rel_codes: torch.Tensor, anchors: torch.Tensor, weights: Sequence[float], clip: float, size: tuple[int, int]
) -> torch.Tensor:
    """torchvision's ``BoxCoder.decode_single`` + ``clip_boxes_to_image`` without host tensors.

    torchvision builds ``torch.tensor(0.5, device=...)`` inside, a host-to-device copy that
    CUDA graph capture refuses; python scalars keep the same arithmetic capturable.
    """
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = rel_codes[:, 0] / wx, rel_codes[:, 1] / wy
    dw = torch.clamp(rel_codes[:, 2] / ww, max=clip)
    dh = torch.clamp(rel_codes[:, 3] / wh, max=clip)
    pred_x, pred_y = dx * widths + ctr_x, dy * heights + ctr_y
    half_w, half_h = 0.5 * torch.exp(dw) * widths, 0.5 * torch.exp(dh) * heights
    height, width = size
    return torch.stack(
        (
            (pred_x - half_w).clamp(0, width),
            (pred_y - half_h).clamp(0, height),
            (pred_x + half_w).clamp(0, width),
            (pred_y + half_h).clamp(0, height),
        ),
        dim=1,
    )


def bucket(n: int, buckets: Sequence[int] = BATCH_BUCKETS) -> int:
    """The smallest bucket that holds ``n`` crops (``n`` itself beyond the largest)."""
    return next((b for b in buckets if b >= n), n)


class _Graphed:
    """One CUDA graph over ``fn`` with a static input; outputs are overwritten by the next replay."""

    def __init__(self, fn: Callable[[torch.Tensor], Any], example: torch.Tensor, warmup: int = 3) -> None:
        self.static_in = example.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as the CUDA graph docs ask
            for _ in range(warmup):
                fn(self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = fn(self.static_in)

    def __call__(self, x: torch.Tensor) -> Any:
        self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out


class TorchFusedFieldModel:
    """A :class:`~edge.analysis.field.FieldModel` on PyTorch, the whole field on one device."""

    def __init__(
        self,
        detector: DetectorGraph,
        classifier: FusedClassifier,
        detector_spec: DetectorSpec,
        classifier_spec: ClassifierSpec,
        device: str = "cuda",
        precision: Precision = "fp16",
        cuda_graphs: bool = True,
        parallel_members: bool = True,
        max_batch: int = 64,
        score_threshold: float | None = None,
        crop_margin: float | None = None,
        compile: bool = False,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError("backend torch on cuda: this PyTorch sees no CUDA device (use device: cpu)")
        if self.device.type == "cpu" and precision == "fp16":
            # FP16 convolutions on the CPU are 10-35x slower and NMS has no FP16 CPU kernel.
            raise EngineError("precision fp16 needs a CUDA device; use precision: fp32 on the CPU")
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.precision = precision
        self.det_spec = detector_spec
        self.cls_spec = classifier_spec
        self.score_threshold = detector_spec.score_threshold if score_threshold is None else score_threshold
        self.crop_margin = classifier_spec.count_margin if crop_margin is None else crop_margin
        self.max_batch = max_batch
        self.factor: float | None = None  # detector pixels per field pixel (set_scale); None: fit the field
        self.overlap = 0
        self.tile: int | None = None
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        # The ensemble's networks run side by side on their own streams inside the classifier's
        # CUDA graph: at a field's batch size one network leaves most of a large GPU idle.
        self.parallel_members = parallel_members and self.cuda_graphs
        self.name = f"torch-{self.device.type}-{precision}" + ("-graphs" if self.cuda_graphs else "")
        self._streams: list[torch.cuda.Stream] = []
        self._cell_columns = torch.tensor(
            [detector_spec.labels.index(n) for n in detector_spec.cell_labels], device=self.device
        )
        memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        self.memory_format = memory_format
        self.detector = detector.eval().to(self.device, self.dtype, memory_format=memory_format)
        self.classifier = classifier.eval().to(self.device, self.dtype, memory_format=memory_format)
        self.compiled = compile
        if compile:
            self._compile()
        self._mean = torch.tensor(IMAGE_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(IMAGE_STD, device=self.device).view(1, 3, 1, 1) * 255.0
        self._anchors: dict[tuple[int, int], torch.Tensor] = {}
        self._detector_graphs: dict[tuple[int, int], _Graphed | None] = {}  # None: capture failed
        self._classifier_graphs: dict[int, _Graphed] = {}
        self.graph_failures: list[str] = []
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels

    def _compile(self) -> None:
        """Inductor for the networks (the convolutions: nearly all the work); the detector's
        transform, anchors and decoding stay eager. Without inductor's own CUDA graphs: this
        model captures its graphs itself, per input size and batch bucket, around the compiled code."""
        mode = "max-autotune-no-cudagraphs" if self.device.type == "cuda" else "default"
        classifier = self.classifier
        classifier.stage1 = torch.compile(classifier.stage1, mode=mode, dynamic=False)
        classifier.members = torch.nn.ModuleList(torch.compile(m, mode=mode, dynamic=False) for m in classifier.members)
        backbone = self.detector.detector.backbone
        self.detector.detector.backbone = torch.compile(backbone, mode=mode, dynamic=False)
        self.name += "-compiled"

    @property
    def providers(self) -> list[str]:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        extras = (":cuda-graphs" if self.cuda_graphs else "") + (":parallel-members" if self.parallel_members else "")
        extras += ":compiled" if self.compiled else ""
        return [f"torch:{self.device.type}:{name}:{self.precision}{extras}"]

    # -- stages -------------------------------------------------------------------------
    def _upload(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> float32 (1, 3, H, W) on the device, 0..255."""
        # uint8 goes up (a quarter of the bytes of float32); conversion happens on the device.
        host = torch.from_numpy(np.ascontiguousarray(image))
        return host.to(self.device).permute(2, 0, 1)[None].float()

    def set_scale(self, factor: float | None, overlap: int = 0, tile: int | None = None) -> None:
        """Detector pixels per field pixel (None: fit the field), tile overlap and side, as ``Detector``'s."""
        self.factor, self.overlap, self.tile = factor, overlap, tile

    def _detect(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, FieldPlan]:
        """The field's cells as the host ``Detector`` finds them: resized by the plan, tile by tile,
        each tile keeping the cells whose centre is in its core; boxes in field pixels."""
        height, width = frame.shape[-2:]
        plan = plan_field(height, width, self.det_spec, self.factor, self.overlap, self.tile)
        resized = frame
        if (plan.height, plan.width) != (height, width):
            # antialias: a large camera frame shrunk without it aliases (INTER_AREA on the host path)
            resized = F.interpolate(
                frame, size=(plan.height, plan.width), mode="bilinear", antialias=True, align_corners=False
            )
        found, scores = [], []
        for tile in plan.tiles:
            x, size = self._detector_input(resized[..., tile.y0 : tile.y1, tile.x0 : tile.x1])
            boxes, tile_scores = self._select(*self._run_detector(x, size))
            boxes = boxes + torch.tensor([tile.x0, tile.y0, tile.x0, tile.y0], device=boxes.device, dtype=boxes.dtype)
            owned = in_core(boxes, tile.core)  # tensor arithmetic: stays on the device
            found.append(boxes[owned])
            scores.append(tile_scores[owned])
        boxes, cell_scores = torch.cat(found), torch.cat(scores)
        if plan.tiled:
            kept = nms(boxes, cell_scores, self.det_spec.nms_iou)[: self.det_spec.max_detections * len(plan.tiles)]
            boxes, cell_scores = boxes[kept], cell_scores[kept]
        return boxes / plan.factor, cell_scores, plan

    def _detector_input(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """A resized field (or one tile of it), normalised and padded as RetinaNet's transform pads."""
        size = (int(image.shape[-2]), int(image.shape[-1]))
        x = (image - self._mean) / self._std
        pad_h = -size[0] % SIZE_DIVISIBLE
        pad_w = -size[1] % SIZE_DIVISIBLE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x.to(self.dtype).contiguous(memory_format=self.memory_format), size

    def _anchors_for(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        anchors = self._anchors.get(size)
        if anchors is None:
            det = self.detector.detector
            features = list(det.backbone(x).values())
            image_list = ImageList(x.float(), [size])
            anchors = det.anchor_generator(image_list, [f.float() for f in features])[0]
            self._anchors[size] = anchors
        return anchors

    def _run_detector(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        anchors = self._anchors_for(x, size)
        graph_det = self.detector

        det = graph_det.detector
        coder = det.box_coder

        def heads(inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            head = det.head(list(det.backbone(inp).values()))
            rel = head["bbox_regression"][0].float()
            boxes = decode_boxes(rel, anchors, coder.weights, coder.bbox_xform_clip, size)
            return boxes, torch.sigmoid(head["cls_logits"][0].float())[:, 1:]

        if not self.cuda_graphs:
            return heads(x)
        if size not in self._detector_graphs:
            try:
                self._detector_graphs[size] = _Graphed(heads, x)
            except RuntimeError as exc:  # capture can refuse an op; eager still works
                self._graph_failed(f"detector {size}: {exc}")
                self._detector_graphs[size] = None
        graphed = self._detector_graphs[size]
        if graphed is None:
            return heads(x)
        boxes, scores = graphed(x)
        return boxes.clone(), scores.clone()

    def _graph_failed(self, what: str) -> None:
        log.warning("CUDA graph capture failed, running eagerly: %s", what)
        self.graph_failures.append(what)

    def _select(self, boxes: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Threshold, top-k and NMS on the device, as ``edge.analysis.detect.Detector`` does on the host."""
        cell_scores = scores[:, self._cell_columns].max(dim=1).values
        candidates = torch.nonzero(cell_scores >= self.score_threshold).squeeze(1)
        if candidates.numel() > self.det_spec.pre_nms_top_k:
            top = torch.topk(cell_scores[candidates], self.det_spec.pre_nms_top_k).indices
            candidates = candidates[top]
        kept = candidates[nms(boxes[candidates], cell_scores[candidates], self.det_spec.nms_iou)]
        kept = kept[: self.det_spec.max_detections]
        return boxes[kept], cell_scores[kept]

    def _crop(self, frame: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Square, context-padded crops with replicated borders, as ``edge.analysis.crops`` cuts them."""
        size = self.cls_spec.crop_size
        wh = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1).clamp(min=1.0)
        side = wh * (1.0 + self.crop_margin)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
        # The host path rounds to whole pixels; so does this, for the same crops.
        top_left = torch.round(centre - side[:, None] / 2.0)
        side_px = torch.round(side).clamp(min=1.0)
        bottom_right = top_left + side_px[:, None]
        height, width = frame.shape[-2:]
        limits = torch.tensor([width, height], device=frame.device, dtype=boxes.dtype)
        overhang = torch.cat([(-top_left).flatten(), (bottom_right - limits).flatten()]).amax()
        pad = max(0, math.ceil(float(overhang)))
        source = F.pad(frame, (pad, pad, pad, pad), mode="replicate") if pad else frame
        rois = torch.cat([torch.zeros_like(side[:, None]), top_left + pad, bottom_right + pad], dim=1)
        # aligned=True: pixel i covers [i, i+1); adaptive sampling averages each bin's area.
        crops = roi_align(source, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        return ((crops - self._mean) / self._std).to(self.dtype).contiguous(memory_format=self.memory_format)

    def _classify(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        countable, probs = [], []
        for start in range(0, len(crops), self.max_batch):
            chunk = crops[start : start + self.max_batch]
            n = len(chunk)
            if not self.cuda_graphs:
                c, p = self.classifier.classify(chunk)
                countable.append(c)
                probs.append(p)
                continue
            size = bucket(n, [b for b in BATCH_BUCKETS if b <= self.max_batch] or [self.max_batch])
            if n < size:
                chunk = torch.cat([chunk, chunk.new_zeros((size - n, *chunk.shape[1:]))])
            graphed = self._classifier_graphs.get(size)
            if graphed is None:
                try:
                    graphed = self._classifier_graphs[size] = _Graphed(self._classify_graph_body, chunk)
                except RuntimeError as exc:
                    self._graph_failed(f"classifier batch {size} (parallel={self.parallel_members}): {exc}")
                    if self.parallel_members:
                        self.parallel_members = False
                    else:
                        self.cuda_graphs = False
                    self._classifier_graphs.clear()
                    return self._classify(crops)
            c, p = graphed(chunk)
            countable.append(c[:n].clone())
            probs.append(p[:n].clone())
        return torch.cat(countable), torch.cat(probs)

    def _classify_graph_body(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.parallel_members:
            return self.classifier.classify(x)
        nets = [self.classifier.stage1, *self.classifier.members]
        if not self._streams:
            self._streams = [torch.cuda.Stream(self.device) for _ in nets]
        current = torch.cuda.current_stream(self.device)
        logits = []
        for net, stream in zip(nets, self._streams, strict=True):
            stream.wait_stream(current)  # fork: x is ready
            with torch.cuda.stream(stream):
                logits.append(net(x))
        for stream in self._streams:
            current.wait_stream(stream)  # join before the softmax and mean
        countable = torch.softmax(logits[0].float(), dim=1)[:, 1]
        probs = torch.stack([torch.softmax(v.float(), dim=1) for v in logits[1:]]).mean(dim=0)
        return countable, probs

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, image: np.ndarray, boxes: np.ndarray | None = None) -> FieldOutputs:
        with torch.no_grad():
            t0 = time.perf_counter()
            frame = self._upload(image)
            found, scores, plan = self._detect(frame)
            if boxes is not None:
                found = torch.as_tensor(np.asarray(boxes, np.float32), device=self.device).reshape(-1, 4)
                scores = torch.ones(len(found), device=self.device)
            self._sync()
            t1 = time.perf_counter()
            if len(found):
                crops = self._crop(frame, found)
                self._sync()
                t2 = time.perf_counter()
                p_countable, probs = self._classify(crops)
                out = [t.cpu().numpy() for t in (found, scores, p_countable, probs)]
            else:
                t2 = time.perf_counter()
                num_classes = self.cls_spec.outputs[1].shape[1]
                out = [
                    np.empty((0, 4), np.float32),
                    np.empty(0, np.float32),
                    np.empty(0, np.float32),
                    np.empty((0, int(num_classes)), np.float32),
                ]
            t3 = time.perf_counter()
        timings = {"detect": (t1 - t0) * 1e3, "crop": (t2 - t1) * 1e3, "classify": (t3 - t2) * 1e3}
        return FieldOutputs(out[0].astype(np.float32), out[1].astype(np.float32), out[2], out[3], timings, plan)


def load_torch_models(bundle: Bundle, weights: Path | None = None) -> tuple[DetectorGraph, FusedClassifier]:
    """The bundle's architectures with its PyTorch weights (``torch/`` in the bundle, or ``weights``)."""
    manifest = bundle.manifest
    folder = weights or (bundle.root / manifest.torch_weights if manifest.torch_weights else None)
    if folder is None:
        raise EngineError(
            f"bundle {manifest.name} carries no PyTorch weights (torch_weights in bundle.json) and "
            "engine.torch_weights is not set: the torch backend needs the checkpoints the bundle was exported from"
        )
    detector, classifier, trained = load_graphs(
        manifest.profile, len(manifest.classes), tuple(manifest.detector.labels), Path(folder), require_all=True,
        stage2=tuple(manifest.classifier.stage2), stage1=manifest.classifier.stage1,
    )  # fmt: skip
    if not trained:
        raise EngineError(f"no PyTorch weights found in {folder}")
    return detector, classifier
