"""CLI sub-commands. Each module defines ``register(subparsers)``; the CLI discovers them automatically."""
