"""JSON cleaning and version records (analysis.store.jsonio), shared by runs, plans, channel reports and exports."""
import json
import math

import numpy as np
import torch

from analysis.store.jsonio import clean_json, library_versions


def test_clean_json_turns_arrays_tensors_and_scalars_into_plain_json_with_nan_as_null():
    x = {1: np.array([1.0, np.nan]), "t": torch.tensor([[1, 2]]), "s": np.float32(math.inf), "i": np.int64(3),
         "b": np.bool_(True), "tup": (1, 2.5, None), "f": float("-inf"), "z": torch.tensor(0.5)}
    out = clean_json(x)
    assert out == {"1": [1.0, None], "t": [[1, 2]], "s": None, "i": 3, "b": True, "tup": [1, 2.5, None], "f": None,
                   "z": 0.5}
    assert type(out["i"]) is int and type(out["b"]) is bool
    json.dumps(out, allow_nan=False)


def test_clean_json_keeps_unknown_objects_unless_a_fallback_is_given():
    class Thing:
        def __str__(self):
            return "thing"

    t = Thing()
    assert clean_json({"a": t})["a"] is t
    assert clean_json({"a": [t]}, fallback=str) == {"a": ["thing"]}


def test_library_versions_names_the_libraries_a_result_depends_on():
    v = library_versions()
    assert set(v) == {"python", "torch", "transformers", "numpy", "entroscope"}
    assert v["torch"] == torch.__version__ and v["numpy"] == np.__version__
