"""ds_minimodel: mini-model adaptation of masked language models to new languages, on DeepSpeed."""

__version__ = "0.1.0"
