"""Families: each file composes the shared ``bertjax.nn`` blocks through config values and
declares its Hugging Face weight names. ``Model`` is the one module tree for all of them."""

from bertjax.models import (albert, bert, distilbert, electra, eurobert, modernbert,  # noqa: F401
                            roberta, spanbert)
from bertjax.models.base import Model, ModelOutput, build_model
from bertjax.models.registry import (Family, families, family_defaults, family_for_model_type,
                                     get_family)

__all__ = ["Family", "Model", "ModelOutput", "build_model", "families", "family_defaults",
           "family_for_model_type", "get_family"]
