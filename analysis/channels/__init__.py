"""Iterative channel pruning with hybrid multi-domain calibration."""
