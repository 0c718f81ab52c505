"""Command line: ``python -m analysis <command>``."""
