"""Encoder families, one module each, found by the checkpoint's ``config.model_type``.

See :mod:`adapler.backbones.base` for the interface the removal loop calls. To add a family,
write ``adapler/backbones/<family>.py`` with a :class:`BackboneFamily` subclass and list it in
FAMILIES.
"""

from __future__ import annotations

from torch import nn

from adapler.backbones.base import BackboneFamily, TokenRows, UnsupportedBackbone
from adapler.backbones.bert import BertFamily
from adapler.backbones.deberta_v2 import DebertaV2Family
from adapler.backbones.distilbert import DistilBertFamily
from adapler.backbones.electra import ElectraFamily
from adapler.backbones.modernbert import ModernBertFamily
from adapler.flops import EncoderSize

FAMILIES: tuple[type[BackboneFamily], ...] = (
    BertFamily,
    DistilBertFamily,
    ElectraFamily,
    DebertaV2Family,
    ModernBertFamily,
)
SUPPORTED_MODEL_TYPES = tuple(model_type for family in FAMILIES for model_type in family.model_types)

__all__ = [
    "FAMILIES",
    "encoder_size",
    "SUPPORTED_MODEL_TYPES",
    "BackboneFamily",
    "TokenRows",
    "UnsupportedBackbone",
    "family_class",
    "family_for",
]


def family_class(config) -> type[BackboneFamily]:
    """The family of a transformers config, checked; UnsupportedBackbone (one line) otherwise."""
    for family in FAMILIES:
        if config.model_type in family.model_types:
            family.check(config)
            return family
    raise UnsupportedBackbone(
        f"model_type {config.model_type!r} is not supported; AdapLeR here prunes these encoder "
        f"families: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def family_for(backbone: nn.Module) -> BackboneFamily:
    """The family bound to a Hugging Face ``...ForSequenceClassification`` model."""
    return family_class(backbone.config)(backbone)


def encoder_size(config, cp_hidden: int = 32) -> EncoderSize:
    """The FLOPs shape of a transformers config, read by its encoder family (its field names)."""
    return family_class(config).encoder_size(config, cp_hidden)
