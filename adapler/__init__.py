"""AdapLeR (Modarressi et al., ACL 2022) for BERT-family classifiers: plain PyTorch + transformers.

    from adapler import AdapLeRForSequenceClassification
    model = AdapLeRForSequenceClassification.from_backbone("google-bert/bert-base-uncased", num_labels=2)
"""

from adapler.modeling import AdapLeRForSequenceClassification, AdapLeROutput

__all__ = ["AdapLeRForSequenceClassification", "AdapLeROutput"]
__version__ = "0.1.0"
