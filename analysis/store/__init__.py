"""Files we own: safe writes (:mod:`.outdir`: ownership markers, temporary folder then rename, under a file
lock), the run and plan JSON schemas (:mod:`.schemas`, pydantic), provenance checks (:mod:`.provenance`:
a plan or run made for another model is refused), the one strict JSON reader and writer with schema versions
(:mod:`.jsonio`), and the gate every input path passes (:mod:`.inputs`: special and mislabelled files).
The face is lazy (see :mod:`analysis.lazy`); inside ``analysis/`` import from the defining module.
"""
from analysis.lazy import lazy_exports

_LAZY = {
    "check_out_dir": "outdir", "check_out_file": "outdir", "atomic_dir": "outdir", "write_text_atomic": "outdir",
    "validate_run": "schemas", "validate_plan": "schemas", "read_run": "schemas", "read_plan": "schemas",
    "read_eval": "schemas", "read_sweep": "schemas", "read_json": "jsonio", "loads_strict": "jsonio", "dumps": "jsonio",
    "check_input_file": "inputs",
    "check_recorded_model": "provenance", "recorded_model": "provenance",
    "clean_json": "jsonio", "library_versions": "jsonio",
}
__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
