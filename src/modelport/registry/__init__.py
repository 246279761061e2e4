"""What exists and who may touch it: models, versions, aliases, permissions, audit (no HTTP here)."""
