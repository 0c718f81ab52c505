"""Text: domains, local files, hub datasets, calibration windows."""
