"""Read a run's metrics.jsonl: summaries people read and PNG plots people look at."""

from __future__ import annotations

from pathlib import Path

from ds_minimodel.errors import UserError
from ds_minimodel.metrics import read_metrics


def eval_summary(run_dir: str | Path) -> dict[str, tuple[float, float]]:
    """{metric: (first value, last value)} over the run's eval records."""
    evals = read_metrics(run_dir, "eval")
    if not evals:
        raise UserError(f"{run_dir} has no eval records in metrics.jsonl")
    keys = sorted(k for k in evals[0] if k.startswith("valid_"))
    return {k: (evals[0][k], evals[-1][k]) for k in keys}


def plot_losses(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Training loss per step and validation losses, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    train, evals = read_metrics(run_dir, "train"), read_metrics(run_dir, "eval")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    heads = [k for k in ("final_loss", "mid_loss") if train and k in train[0]] or ["loss"]
    for key in heads:  # per head: the MiniJoint total is their weighted sum, not a loss to read
        axes[0].plot([r["step"] for r in train], [r[key] for r in train], label=key)
    axes[0].set(title="training MLM loss", xlabel="step", ylabel="nats / masked token")
    for key in sorted({k for r in evals for k in r if k.startswith("valid_")}):
        axes[1].plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label=key)
    axes[1].set(title="validation MLM loss", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "losses.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
