"""Named random streams that take turns in torch's global generators.

Dropout draws from the global generator, so two jobs' dropout masks agree only if their
generators went through the same draws. A multi-language adaptation job runs every language's
forward in one process; to give each language the masks a separate run of it would draw, each
language has its own stream: inside `use(name)` the global generators (CPU, and the current CUDA
device) continue stream `name` where it last stopped, and afterwards continue where they were.

Every stream starts, at the first `use` of any of them, from the global state of that moment:
the state a separate run's first training forward starts from (the job seeded the generator
right before, and nothing between draws from it). `state_dict()` goes into each rank's
checkpoint, so a resumed job continues every stream exactly.
"""

from __future__ import annotations

import contextlib

import torch


def _capture() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _restore(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RngStreams:
    def __init__(self, names):
        self.states: dict[str, dict | None] = dict.fromkeys(names)

    @contextlib.contextmanager
    def use(self, name: str):
        outer = _capture()
        if self.states[name] is None:  # the first use: every stream starts here
            self.states = dict.fromkeys(self.states, outer)
        _restore(self.states[name])
        try:
            yield
        finally:
            self.states[name] = _capture()
            _restore(outer)

    def state_dict(self) -> dict:
        return dict(self.states)

    def load_state_dict(self, states: dict) -> None:
        if set(states) != set(self.states):
            raise ValueError(f"RNG streams {sorted(states)} in the checkpoint != {sorted(self.states)} now")
        self.states = dict(states)
