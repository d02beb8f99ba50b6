"""Data pipeline: token shards on disk, MLM masking, the resumable loader, corpus recipes."""

from ds_minimodel.data.loader import MLMLoader, eval_batches, sample_seed
from ds_minimodel.data.masking import IGNORE_INDEX, mask_tokens
from ds_minimodel.data.shards import TokenShards, write_shards

__all__ = ["MLMLoader", "eval_batches", "sample_seed", "IGNORE_INDEX", "mask_tokens",
           "TokenShards", "write_shards"]
