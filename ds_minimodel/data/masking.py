"""BERT/RoBERTa masked-LM corruption, reproducible per row.

Each row draws from its own `torch.Generator` seeded by the caller (the loader derives the seed
from the sample's position in the epoch). So a row's mask is a function of its seed and
contents only: it does not change with the batch it lands in, the rank that reads it, or the
world size. That is what lets a resumed or re-sharded run see exactly the same corruption.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ds_minimodel.errors import InvalidValueError
from ds_minimodel.model import IGNORE_INDEX

MASK_FRACTION = 0.8  # of selected positions -> <mask>
RANDOM_FRACTION = 0.1  # -> a random non-special token; the remaining 10% stay unchanged


def mask_tokens(input_ids: torch.Tensor, generator_seeds: Sequence[int], mask_prob: float,
                mask_id: int, vocab_size: int, special_ids: Iterable[int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (corrupted input_ids, labels) for a LongTensor [B, T]; the input is not modified.

    Positions are selected independently with probability `mask_prob`, never on a special token.
    Of the selected: 80% become `mask_id`, 10% a random non-special token, 10% stay as they are.
    `labels` holds the original id at selected positions and IGNORE_INDEX (-100) elsewhere. A row with any
    non-special token gets at least one selected position, so no row contributes zero targets
    (its loss would be 0/0 under per-row averaging, and it would waste a sample).
    """
    if input_ids.dim() != 2:
        raise InvalidValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
    if len(generator_seeds) != input_ids.shape[0]:
        raise InvalidValueError(f"got {len(generator_seeds)} generator seeds for {input_ids.shape[0]} rows")
    if not 0.0 < mask_prob < 1.0:
        raise InvalidValueError(f"mask_prob {mask_prob} is not in (0, 1)")
    special = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=torch.long)
    # Replacement tokens come from the non-special vocabulary: a random <pad> or </s> as input
    # would teach the model that specials occur mid-text.
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special[special < vocab_size]] = False
    replacements = allowed.nonzero().squeeze(1)
    if replacements.numel() == 0:
        raise InvalidValueError(f"vocab_size {vocab_size} has no non-special tokens to sample")

    ids = input_ids.to(torch.long)
    out = ids.clone()
    labels = torch.full_like(ids, IGNORE_INDEX)
    maskable = ~torch.isin(ids, special)
    seq_len = ids.shape[1]
    for row, seed in enumerate(generator_seeds):
        gen = torch.Generator().manual_seed(int(seed))
        # Always draw the same three full-length streams in the same order, whatever gets
        # selected, so the outcome of one position never shifts the draws of another.
        select_u = torch.rand(seq_len, generator=gen)
        action_u = torch.rand(seq_len, generator=gen)
        random_tok = replacements[torch.randint(len(replacements), (seq_len,), generator=gen)]

        ok = maskable[row]
        selected = (select_u < mask_prob) & ok
        if not selected.any() and ok.any():
            # Deterministic fallback: the maskable position with the smallest draw.
            selected[torch.where(ok, select_u, torch.full_like(select_u, 2.0)).argmin()] = True
        labels[row, selected] = ids[row, selected]
        to_mask = selected & (action_u < MASK_FRACTION)
        to_random = selected & (action_u >= MASK_FRACTION) & (action_u < MASK_FRACTION + RANDOM_FRACTION)
        out[row, to_mask] = mask_id
        out[row, to_random] = random_tok[to_random]
    return out, labels
