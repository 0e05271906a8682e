"""ELECTRA (the discriminator as a classifier): BERT's layers and embeddings, an optional
projection from the embedding width to the hidden width, and its own classification head.

The layers are BERT's (same module names), so this family is BERT's with two differences: what
enters layer 1 is ``embeddings_project(embeddings(...))`` when the embedding width differs from
the hidden width (saliency's e_i is taken there, on the input of layer 1, as for the others), and
the head is ELECTRA's ``classifier`` (dense, GELU, dropout, out_proj over the first token).
"""

from __future__ import annotations

import torch
from torch import nn

from adapler.backbones.base import TokenRows
from adapler.backbones.bert import BertFamily


class ElectraFamily(BertFamily):
    model_types = ("electra",)

    def embed(self, input_ids, token_type_ids, attention_mask):
        hidden = self.base_model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, T, E)
        project = getattr(self.base_model, "embeddings_project", None)
        return hidden if project is None else project(hidden)  # (B, T, H)

    @property
    def embedding_output(self) -> nn.Module:
        return getattr(self.base_model, "embeddings_project", self.base_model.embeddings)

    def classify(self, x: torch.Tensor, rows: TokenRows) -> torch.Tensor:
        return self.backbone.classifier(rows.first(x)[:, None, :])  # the head reads position 0
