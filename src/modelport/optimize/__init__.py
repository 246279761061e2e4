"""Model optimization: pruning, quantization, distillation, export, and reports."""
