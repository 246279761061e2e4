"""From a model reference and inputs to outputs: resolution, loading, pre/post-processing (no HTTP)."""
