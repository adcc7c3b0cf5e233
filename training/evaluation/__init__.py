"""Metrics, held-back and cross-domain evaluation, composed slides, where a bundle errs."""
