"""bertjax: BERT-family encoders in JAX/Flax NNX, from a laptop CPU to a TPU pod."""

__version__ = "0.1.0"
