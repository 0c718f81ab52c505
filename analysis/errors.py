"""User-facing errors.

Every failure a user can cause (bad model id, bad file, impossible selection, out of memory) is raised
as an :class:`EntroscopeError` with a one-line message and, where useful, a hint. The CLI prints
``error: <message>`` (plus the hint) and exits non-zero; the app shows it with ``st.error``. Anything
else escaping is a bug in Entroscope, not in the user's input.
"""
from __future__ import annotations


class EntroscopeError(Exception):
    """An error caused by user input or the environment, with a clear message."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # one line, plus the hint when present
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ModelLoadError(EntroscopeError):
    """The model id, directory or file can't be loaded."""


class UnsupportedArchitectureError(EntroscopeError):
    """The architecture has no adapter (we can't find layers, attention, MLP or norms)."""


class DataError(EntroscopeError):
    """Calibration or evaluation text/token data is unusable."""


class SelectionError(EntroscopeError):
    """A selection or plan is impossible (k too large, block out of range, all protected)."""


class ResourceError(EntroscopeError):
    """Out of memory or another resource limit."""


def oom_error(exc: BaseException, what: str = "this step") -> ResourceError:
    """Turn a (CUDA or CPU) out-of-memory exception into a clear, actionable error."""
    return ResourceError(
        f"Out of memory during {what}: {str(exc).splitlines()[0][:160]}",
        hint="try a smaller batch size or fewer samples, dtype bf16, or device_map offload",
    )


def is_oom(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU out-of-memory errors."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except Exception:  # pragma: no cover - torch always present in practice
        pass
    msg = str(exc).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "defaultcpuallocator" in msg


class SaveError(EntroscopeError):
    """An output directory can't or mustn't be written (exists, not writable, outside the root)."""


class ExtensionStopped(Exception):
    """Raised by an analysis extension (MI-PRUN) when ``should_stop()`` turns true; the message says where
    it stopped (e.g. ``"MI-PRUN after 40/151 pairs"``). The token pass it ran on is kept."""
