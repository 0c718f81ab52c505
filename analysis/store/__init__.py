"""Files we own: safe writes, JSON schemas, provenance checks."""
