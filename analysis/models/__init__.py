"""Models: loading, architecture adapters, surgery views, checkpoints and their formats."""
