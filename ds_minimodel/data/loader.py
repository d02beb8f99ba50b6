"""The masked-LM loader: packed sequences, a global order, and a position that resumes exactly.

Sample i of a split is the i-th window of T-2 tokens of the split's stream, wrapped in
`<s> ... </s>` (documents inside the stream are already separated by `</s>`, and windows cross
document boundaries like RoBERTa's FULL-SENTENCES: no padding, every position trains).

The order of samples is defined globally, not per rank: epoch e visits the samples in a
permutation seeded by (seed, e), and each optimizer step takes the next global batch of
micro_batch_size * grad_accum * world_size positions. Within a step, micro-batch m of rank r
takes positions  pos + (m*world_size + r)*mb ... + mb.  Consequences:

- the state is two integers (epoch, position) that mean the same thing at any world size;
- a single process with micro_batch_size * world_size sees, at each micro-step, exactly the
  union of the ranks' rows (the distributed tests compare those tensors);
- the mask of a sample is seeded by (seed, epoch, position), so it also does not depend on
  who reads the sample.
"""

from __future__ import annotations

import numpy as np
import torch

from ds_minimodel.data.masking import mask_tokens
from ds_minimodel.data.shards import TokenShards
from ds_minimodel.errors import InvalidValueError

STATE_VERSION = 1
_MASK64 = (1 << 64) - 1
# Mask seeds of validation samples use this in place of the epoch, so they never coincide with
# a training sample's seed stream by construction of the inputs.
_EVAL_EPOCH = (1 << 32) - 1


def _splitmix64(x: int) -> int:
    # A fixed, well-mixed integer hash (Steele et al.'s SplitMix64 finaliser): unlike Python's
    # hash() it is the same in every process, version and platform.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The mask seed of the sample at `position` of `epoch` (63 bits: a valid manual_seed)."""
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ (epoch & _MASK64))
    h = _splitmix64(h ^ (position & _MASK64))
    return h >> 1


def _num_samples(shards: TokenShards, split: str, seq_len: int) -> int:
    if seq_len < 3:
        raise InvalidValueError(f"seq_len {seq_len} is too short: it needs <s>, </s> and at least one token")
    n_tok = shards.num_tokens(split)
    n = n_tok // (seq_len - 2)
    if n == 0:
        raise InvalidValueError(f"corpus split '{split}' in {shards.path} has {n_tok} tokens, "
                                f"fewer than one sequence of {seq_len}")
    return n


def _build_rows(tokens: np.ndarray, sample_ids, seq_len: int, bos: int, eos: int) -> torch.Tensor:
    body = seq_len - 2
    rows = np.empty((len(sample_ids), seq_len), dtype=np.int64)
    rows[:, 0] = bos
    rows[:, -1] = eos
    for j, i in enumerate(sample_ids):
        rows[j, 1:-1] = tokens[int(i) * body:(int(i) + 1) * body]
    return torch.from_numpy(rows)


class MLMLoader:
    """Infinite masked-LM batches for one rank; `state_dict()` goes into the checkpoint."""

    def __init__(self, shards: TokenShards, split: str, seq_len: int, micro_batch_size: int,
                 grad_accum: int, rank: int, world_size: int, seed: int,
                 mask_prob: float = 0.15, shuffle: bool = True):
        for name, value in (("seq_len", seq_len), ("micro_batch_size", micro_batch_size),
                            ("grad_accum", grad_accum), ("world_size", world_size)):
            if value < 1:
                raise InvalidValueError(f"{name} must be >= 1, got {value}")
        if not 0 <= rank < world_size:
            raise InvalidValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if not 0.0 < mask_prob < 1.0:
            raise InvalidValueError(f"mask_prob {mask_prob} is not in (0, 1)")
        self.shards, self.split, self.seq_len = shards, split, seq_len
        self.micro_batch_size, self.grad_accum = micro_batch_size, grad_accum
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.mask_prob, self.shuffle = mask_prob, shuffle
        self.samples_per_epoch = _num_samples(shards, split, seq_len)
        self.global_batch_size = micro_batch_size * grad_accum * world_size
        if self.global_batch_size > self.samples_per_epoch:
            raise InvalidValueError(
                f"corpus split '{split}' in {shards.path} has {self.samples_per_epoch} sequences of "
                f"{seq_len}, fewer than one global batch of {self.global_batch_size} "
                f"(micro_batch_size {micro_batch_size} x grad_accum {grad_accum} x world_size {world_size})")
        self.tokens_per_step = self.global_batch_size * seq_len
        self._tokens = shards.tokens(split)
        special = shards.index["special"]
        self._bos, self._eos, self._mask = special["bos"], special["eos"], special["mask"]
        self._special_ids = shards.special_ids
        self._vocab_size = shards.vocab_size
        self.epoch = 0
        self.position = 0  # samples of this epoch consumed by all ranks together
        self._perm_epoch: int | None = None
        self._perm: np.ndarray | None = None

    # -- order -------------------------------------------------------------------------------
    def _order(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            n = self.samples_per_epoch
            if self.shuffle:
                # SeedSequence of (seed, epoch): independent permutations per epoch.
                self._perm = np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(n)
            else:
                self._perm = np.arange(n)
            self._perm_epoch = epoch
        return self._perm

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """This rank's grad_accum micro-batches for the next optimizer step."""
        if self.position + self.global_batch_size > self.samples_per_epoch:
            # Drop the remainder: every step has a full global batch, and the next epoch
            # starts from a fresh permutation.
            self.epoch += 1
            self.position = 0
        order = self._order(self.epoch)
        mb, ws = self.micro_batch_size, self.world_size
        out = []
        for m in range(self.grad_accum):
            start = self.position + (m * ws + self.rank) * mb
            positions = range(start, start + mb)
            rows = _build_rows(self._tokens, order[start:start + mb], self.seq_len, self._bos, self._eos)
            seeds = [sample_seed(self.seed, self.epoch, p) for p in positions]
            input_ids, labels = mask_tokens(rows, seeds, self.mask_prob, self._mask,
                                            self._vocab_size, self._special_ids)
            out.append({"input_ids": input_ids, "labels": labels})
        self.position += self.global_batch_size
        return out

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain JSON: where the next step starts, plus what must match to resume."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "split": self.split,
            "seq_len": self.seq_len,
            "samples_per_epoch": self.samples_per_epoch,
            "shuffle": self.shuffle,
            "mask_prob": self.mask_prob,
            "data_fingerprint": self.shards.fingerprint(),
            # Informational: resuming with another world size or micro-batch size is allowed
            # (the position counts samples, not steps).
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; refuses a state taken on different data or geometry."""
        missing = [k for k in ("epoch", "position", "seed", "seq_len") if k not in state]
        if missing:
            raise InvalidValueError(f"loader state is missing {', '.join(missing)}")
        mine = self.state_dict()
        problems = [f"{key} {state[key]!r} in the checkpoint != {mine[key]!r} now"
                    for key in ("seed", "split", "seq_len", "samples_per_epoch", "shuffle", "mask_prob",
                                "data_fingerprint")
                    if key in state and state[key] != mine[key]]
        if problems:
            raise InvalidValueError("cannot resume the data loader: " + "; ".join(problems))
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.samples_per_epoch:
            raise InvalidValueError(f"loader state epoch {epoch} / position {position} is out of range "
                                    f"(samples_per_epoch {self.samples_per_epoch})")
        self.epoch, self.position = epoch, position


class LanguageLoaders:
    """One MLMLoader per language, stepped together: a multi-language adaptation job.

    Each step holds every language's micro-batches of the step, one language per micro-batch
    ({"batches": {code: its micro-batch m}}: each is its own forward and backward, so only one
    language's activations are alive at a time), for m in 0..grad_accum-1, every language in turn.
    Each language's loader is the one a separate run of it builds (same seed, micro-batch,
    accumulation, rank and world), so each language sees the batches and masks of that run, step
    for step. The state is every language's loader state; a checkpoint of other languages, or of
    the same in another order, is refused.
    """

    def __init__(self, loaders: dict[str, MLMLoader]):
        self.loaders = loaders
        self.grad_accum = next(iter(loaders.values())).grad_accum
        assert all(ld.grad_accum == self.grad_accum for ld in loaders.values())

    def next_step(self) -> list[dict]:
        steps = {code: loader.next_step() for code, loader in self.loaders.items()}
        return [{"batches": {code: steps[code][m]}} for m in range(self.grad_accum) for code in steps]

    def state_dict(self) -> dict:
        return {"languages": {code: loader.state_dict() for code, loader in self.loaders.items()}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("languages")
        if not isinstance(saved, dict) or list(saved) != list(self.loaders):
            have = "one language" if not isinstance(saved, dict) else f"languages {list(saved)}"
            raise InvalidValueError(f"cannot resume the data loaders: the checkpoint has {have}, "
                                    f"this job {list(self.loaders)}")
        for code, loader in self.loaders.items():
            try:
                loader.load_state_dict(saved[code])
            except InvalidValueError as e:
                raise InvalidValueError(f"language {code}: {e}") from None


def eval_batches(shards: TokenShards, split: str, seq_len: int, batch_size: int,
                 num_batches: int | None, rank: int, world_size: int, seed: int,
                 mask_prob: float = 0.15) -> list[dict[str, torch.Tensor]]:
    """This rank's fixed validation batches: same samples and masks every call.

    Samples are taken in stream order. `batch_size` and `num_batches` are per rank, like the
    training micro-batch: rank r's b-th batch is global batch b*world_size + r, so every rank
    runs the same number of forward passes (ZeRO-3 gathers parameters collectively and would
    hang otherwise) and the ranks together cover exactly what one process with
    batch_size*world_size covers. `num_batches=None` (or more than the split holds) takes every
    full batch.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise InvalidValueError(f"bad eval geometry: batch_size {batch_size}, rank {rank}, world_size {world_size}")
    n = _num_samples(shards, split, seq_len)
    available = n // (batch_size * world_size)
    if available == 0:
        raise InvalidValueError(f"corpus split '{split}' in {shards.path} has {n} sequences of {seq_len}, "
                                f"fewer than one eval batch of {batch_size} x world_size {world_size}")
    count = available if num_batches is None else min(num_batches, available)
    tokens = shards.tokens(split)
    special = shards.index["special"]
    out = []
    for b in range(count):
        start = (b * world_size + rank) * batch_size
        ids = range(start, start + batch_size)
        rows = _build_rows(tokens, ids, seq_len, special["bos"], special["eos"])
        seeds = [sample_seed(seed, _EVAL_EPOCH, i) for i in ids]
        input_ids, labels = mask_tokens(rows, seeds, mask_prob, special["mask"],
                                        shards.vocab_size, shards.special_ids)
        out.append({"input_ids": input_ids, "labels": labels})
    return out
