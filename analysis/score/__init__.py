"""Scoring blocks: analysis result, criteria, selection, MI-PRUN, block search, ground truth."""
