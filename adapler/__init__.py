"""AdapLeR (Modarressi et al., ACL 2022) for BERT-family classifiers: plain PyTorch + transformers.

    from adapler import AdapLeRForSequenceClassification
    model = AdapLeRForSequenceClassification.from_backbone("google-bert/bert-base-uncased", num_labels=2)

The model classes are imported on first use, so that light modules (``adapler.artifacts``,
``adapler.config``, ``adapler.selection``) load without torch.
"""

__all__ = ["AdapLeRForSequenceClassification", "AdapLeROutput"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from adapler import modeling

        return getattr(modeling, name)
    raise AttributeError(f"module 'adapler' has no attribute {name!r}")
