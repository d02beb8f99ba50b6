"""One gradient buffer for the word table that the embedding lookup and the MLM heads share.

The tied [V, d] table gets a gradient from every op that reads it: each MLM head's d W (a dense
[V, d] GEMM output) and the lookup's scatter-add (sparse: only the rows of the batch's ids).
Left to autograd, each op returns its own [V, d] tensor (the lookup's a zero-filled one, mostly
zeros) and autograd sums them: at XLM-R's V = 250,002 and d = 768 every such tensor is 768 MB,
and every one of them is allocated, written and read again, twice per MiniJoint step.

With a `TiedGradient` the ops hand one buffer along instead. Autograd runs a head's backward
before the lookup's (the head reads states computed from the lookup's output), so:

* the first head's backward writes its d W into a new buffer and keeps it here (returning None
  for the weight); a second head (MiniJoint's mid head) accumulates into the same buffer;
* the lookup's backward adds its rows into that buffer in place and returns it: the weight's only
  gradient. When no head handed one over (a forward without labels, or heads on the reference
  path), the lookup falls back to its own zero-filled table.

So one [V, d] tensor per step, and the optimizer's pass over it is the only other V-sized work.

Contract: a `TiedGradient` lives for one forward (the model makes one per call); it is armed by the
lookup's autograd Function (so heads only divert their d W when the lookup's backward is certain
to run and collect it: every head's input depends on the lookup's output), and every backward
through a head also reaches the lookup.
"""

from __future__ import annotations

import torch


class TiedGradient:
    def __init__(self) -> None:
        self.armed = False  # set by the lookup's forward (kernels.functions.Embedding)
        self.buffer: torch.Tensor | None = None

    def accepts(self, weight: torch.Tensor) -> bool:
        """Whether a head reading `weight` should hand its d W here."""
        return self.armed and weight.requires_grad

    def add(self, d_weight: torch.Tensor) -> None:
        """Take a head's d W: the first becomes the buffer (no copy), later ones are added in."""
        if self.buffer is None:
            self.buffer = d_weight
        else:
            self.buffer.add_(d_weight.to(self.buffer.dtype))

    def take(self) -> torch.Tensor | None:
        """The accumulated buffer (the lookup's backward adds its rows and returns it)."""
        buffer, self.buffer = self.buffer, None
        return buffer
