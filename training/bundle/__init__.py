"""Assembling a bundle from trained runs: export, the domain guard and thresholds calibrated, the starter bundle."""
