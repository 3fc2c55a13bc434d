"""bertml."""
