"""Training loops and augmentation, and what they fit: stage 1, stage 2 (marrow), the detector,
fine-tuning from reviewed cells."""
