"""Data sources for training: IDX (MNIST), and more to come (NPZ, CSV, Parquet, built-in sets)."""
