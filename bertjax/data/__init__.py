"""Data: tokenizers, sources, instance creation, masking, Grain pipelines."""
