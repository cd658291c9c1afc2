"""The model: one encoder body plus the heads its config names, for every family. A family is
a set of config values (``bertjax/config/families.py``); its Hugging Face names live in
``bertjax/interop/``."""

from bertjax.models.model import Model, ModelOutput

__all__ = ["Model", "ModelOutput"]
