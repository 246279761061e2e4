"""Model file formats: one module per on-disk format, each with the same verbs."""
