"""Artifact store: content-addressed blobs and version bundles."""
