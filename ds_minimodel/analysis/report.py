"""Read a run's metrics.jsonl: summaries people read and PNG plots people look at."""

from __future__ import annotations

from pathlib import Path

from ds_minimodel.config import read_json_object
from ds_minimodel.data.bibles import language_name
from ds_minimodel.errors import UserError
from ds_minimodel.training.metrics import read_metrics


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


def _adapt_curves(run_dir: Path) -> dict:
    train = read_metrics(run_dir, "train")
    evals = read_metrics(run_dir, "eval")
    return {"step": [r["step"] for r in train], "loss": [r["loss"] for r in train],
            "seconds": [r["train_seconds"] for r in train], "flops": [r["flops"] for r in train],
            "valid": [(r["step"], r.get("valid_final_loss")) for r in evals]}


def _rate(v) -> str:
    """A rate for the report; "?" where it was not recorded (a made-up 0.000 would read as measured)."""
    return "?" if v is None else f"{v:.3f}"


def pipeline_report(work: str | Path, pretrain: str | Path, timings: dict, methods: tuple[str, ...],
                    prep: dict[str, str] | None = None, regular: str | Path | None = None) -> Path:
    """report.md + adaptation.png + transfer.png for a finished pipeline directory.

    `prep` names, per method, the one-time pipeline step its step 2 depends on besides the
    pretrained model (MiniPost's top training; the MLM head a headless encoder needs before the
    standard baseline): its wall-clock is reported next to the step-2 time. `regular`: the
    regular model's branch (pipeline.regular_steps), reported as the paper's comparison
    (`regular_section`)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work = Path(work)
    transfer = read_json_object(work / "transfer.json")
    cls, ret = transfer["classification"], transfer.get("retrieval", {"packs": {}})
    by_method = {v["method"]: (k, v) for k, v in cls["packs"].items()}
    curves = {m: _adapt_curves(work / f"adapt-{m}") for m in methods}
    code = by_method[methods[0]][1]["language"]  # the packs' language (AdaptConfig.language)
    name, short = language_name(code), code.capitalize()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m in methods:
        axes[0].plot(curves[m]["step"], curves[m]["loss"], label=m)
        axes[1].plot(curves[m]["seconds"], curves[m]["loss"], label=m)
    axes[0].set(title=f"step 2: {name} MLM loss", xlabel="step", ylabel="nats / masked token")
    axes[1].set(title=f"step 2: {name} MLM loss", xlabel="training wall-clock (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(work / "adaptation.png", dpi=110)
    plt.close(fig)

    chance = cls["chance_majority"].get("majority")  # None when transfer.json lacks it: shown "?", not 0.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    xs = range(len(methods))
    acc = [by_method[m][1]["accuracy"] for m in methods]
    ctl = [by_method[m][1]["control_accuracy"] for m in methods]
    axes[0].bar([x - 0.2 for x in xs], acc, 0.4, label="adapted embeddings")
    axes[0].bar([x + 0.2 for x in xs], ctl, 0.4, label="random embeddings (control)")
    if chance is not None:
        axes[0].axhline(chance, color="k", ls="--", lw=1, label="chance (majority class)")
    axes[0].axhline(cls["source"]["accuracy"], color="g", ls=":", lw=1, label="English (source)")
    axes[0].set(title=f"verse genre, zero-shot {name}", ylabel="accuracy", xticks=list(xs), xticklabels=methods)
    rpacks = {v["method"]: v for v in ret["packs"].values()}
    if rpacks:
        axes[1].bar([x - 0.2 for x in xs], [rpacks[m]["top1"] for m in methods], 0.4, label="adapted")
        axes[1].bar([x + 0.2 for x in xs], [rpacks[m]["control_top1"] for m in methods], 0.4, label="control")
        axes[1].axhline(1.0 / max(ret["pairs"], 1), color="k", ls="--", lw=1, label="chance")
        axes[1].set(title=f"En<->{short} verse retrieval ({ret['pairs']} pairs)", ylabel="top-1",
                    xticks=list(xs), xticklabels=methods)
    else:  # no retrieval evaluated
        axes[1].set_axis_off()
    for ax in axes:
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(work / "transfer.png", dpi=110)
    plt.close(fig)

    full_s = curves["full"]["seconds"][-1]
    lines = [f"# Mini-model adaptation: English -> {name} (CPU pipeline)", "",
             f"Pretrained model: `{pretrain}`. Each method trains {name} embeddings for the same number "
             f"of steps ({curves['full']['step'][-1]}), then they are plugged into the same English-fine-tuned model.",
             "", f"English (source) accuracy: **{cls['source']['accuracy']:.3f}**; chance (majority class): "
             f"{_rate(chance)}.", "",
             f"| method | {name} accuracy | control (random emb.) | vs control (points) | vs full (points) | "
             "retrieval top-1 | MRR | control top-1 | step-2 train time (s) | speedup vs full | step-2 FLOPs | "
             f"final {short} MLM loss | one-time prep (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    prep = prep or {}
    for m in methods:
        c = by_method[m][1]
        r = rpacks.get(m, {})
        s = curves[m]["seconds"][-1]
        valid = [v for _, v in curves[m]["valid"] if v is not None]
        vs_control = _paired_cell(c.get("correct"), c.get("control_correct"))
        vs_full = _paired_cell(c.get("correct"), by_method["full"][1].get("correct")) if m != "full" else "-"
        lines.append(f"| {m} | {c['accuracy']:.3f} | {c['control_accuracy']:.3f} | {vs_control} | {vs_full} | "
                     f"{r.get('top1', float('nan')):.3f} | "
                     f"{r.get('mrr', float('nan')):.3f} | {r.get('control_top1', float('nan')):.3f} | {s:.0f} | "
                     f"{full_s / s:.2f}x | {curves[m]['flops'][-1]:.3g} | {valid[-1] if valid else float('nan'):.3f} | "
                     f"{_prep_cell(prep.get(m), timings)} |")
    lines += ["", "vs control / vs full: accuracy difference in points on the same test verses, with one "
              "standard error of the paired difference; * marks a difference beyond two standard errors."]
    lines += ["", "One-time prep: the pipeline step the method's step 2 needs besides the pretrained model, "
              "paid once per model, not per language (wall-clock including start-up)."]
    if regular is not None:
        lines += regular_section(work, Path(regular), Path(pretrain))
    lines += ["", "![adaptation](adaptation.png)", "", "![transfer](transfer.png)", "",
              "Wall-clock of each pipeline step (s, including start-up): " +
              ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    out = work / "report.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def regular_section(work: Path, regular: Path, pretrain: Path) -> list[str]:
    """The paper's comparison: the standard baseline and MiniPost adapted from a regular model
    (no mid head, pretrained like the MiniJoint one), MiniJoint from its own model, each pack
    plugged into its own model's English fine-tuning; differences paired by verse id. And what the
    mid head costs the full model: its English accuracy and final MLM loss, regular vs MiniJoint."""

    def results(transfer: Path) -> tuple[dict, dict]:
        cls = read_json_object(transfer)["classification"]
        return cls, {v["method"]: v for v in cls["packs"].values()}

    reg_cls, reg = results(regular / "transfer.json")
    mj_cls, mj = results(work / "transfer.json")
    rows = [("standard", "regular", reg["full"], regular / "adapt-full"),
            ("minipost", "regular", reg["minipost"], regular / "adapt-minipost"),
            ("minijoint", "MiniJoint", mj["minijoint"], work / "adapt-minijoint")]
    base, base_curve = reg["full"], _adapt_curves(regular / "adapt-full")
    lines = ["", "## The paper's comparison: standard and MiniPost from a regular model", "",
             f"The regular model (`{regular / 'pretrain'}`) is pretrained as the MiniJoint one (same data, steps, "
             "batch and schedule) without the mid head. Standard and MiniPost adapt from it, MiniJoint from the "
             "MiniJoint model; each pack is plugged into its own model's English fine-tuning. vs standard: paired "
             "on the same verses (by id).", "",
             "| method | from | accuracy | control | vs control (points) | vs standard (points) | step-2 FLOPs | "
             "fewer FLOPs than standard | step-2 train time (s) | speedup vs standard |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, model, r, run_dir in rows:
        curve = base_curve if name == "standard" else _adapt_curves(run_dir)
        f, t = curve["flops"][-1], curve["seconds"][-1]
        vs_base = "-" if name == "standard" else _paired_flags(*_aligned(r, base))
        ratio = "-" if name == "standard" else f"{base_curve['flops'][-1] / f:.2f}x"
        speed = "-" if name == "standard" else f"{base_curve['seconds'][-1] / t:.2f}x"
        lines.append(f"| {name} | {model} | {r['accuracy']:.3f} | {r['control_accuracy']:.3f} | "
                     f"{_paired_cell(r['correct'], r['control_correct'])} | {vs_base} | {f:.3g} | {ratio} | "
                     f"{t:.0f} | {speed} |")
    lines += ["", "### What the mid head costs the full model", "",
              "| model | pretraining FLOPs | final validation MLM loss | English accuracy (fine-tuned) | vs regular (points) |",
              "| --- | --- | --- | --- | --- |"]
    for name, run_dir, cls in (("regular", regular / "pretrain", reg_cls), ("MiniJoint", pretrain, mj_cls)):
        evals = [r for r in read_metrics(run_dir, "eval") if "valid_final_loss" in r]
        flops = read_metrics(run_dir, "train")[-1]["flops"]
        vs = "-" if name == "regular" else (
            _paired_flags(*_aligned(cls["source"], reg_cls["source"])) if "correct" in cls["source"] else "-")
        lines.append(f"| {name} | {flops:.3g} | {evals[-1]['valid_final_loss']:.3f} | "
                     f"{cls['source']['accuracy']:.3f} | {vs} |")
    lines += ["", "Validation MLM loss: the final head's, on the same English validation split; the MiniJoint "
              "model's pretraining FLOPs include its mid head's."]
    return lines


def _aligned(a: dict, b: dict) -> tuple[list[bool], list[bool]]:
    """Two results' per-example flags on the examples both have, matched by id."""
    b_by_id = dict(zip(b["ids"], _flags(b["correct"])))
    pairs = [(x, b_by_id[i]) for i, x in zip(a["ids"], _flags(a["correct"])) if i in b_by_id]
    if not pairs:
        raise UserError("two transfer results to compare share no test example")
    return [x for x, _ in pairs], [y for _, y in pairs]


def _paired_cell(a: str | None, b: str | None) -> str:
    """"+4.3 ± 1.2*" (points): accuracy of per-example results `a` ("0"/"1" strings from
    transfer.json) minus that of `b` on the same examples, with the paired standard error."""
    if a is None or b is None:  # a transfer.json written before per-example results
        return "-"
    return _paired_flags(_flags(a), _flags(b))


def _prep_cell(step: str | None, timings: dict) -> str:
    if step is None:
        return "-"
    return f"{step}: {timings[step]:.0f}" if step in timings else f"{step}: (reused)"


def languages_report(work: str | Path, pretrain: str | Path, timings: dict, methods: tuple[str, ...],
                     languages: list[str], prep: dict[str, str] | None = None) -> Path:
    """report.md + languages.png for a finished many-languages pipeline (`make pipeline PIPELINE=languages`).

    Per language: each method's zero-shot accuracy, its difference to its random-embedding control
    and to the standard baseline (paired, on that language's test verses). The average over
    languages is taken on the verses every language has (the same ids in every language): per
    verse, the mean over languages, so its standard error counts each verse once however many
    languages it appears in. Each method's step-2 compute is its one multi-language job's."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work = Path(work)
    cls = read_json_object(work / "transfer.json")["classification"]
    results = {(v["method"], v["language"]): v for v in cls["packs"].values()}
    missing = [f"{m}/{c}" for m in methods for c in languages if (m, c) not in results]
    if missing:
        raise UserError(f"{work / 'transfer.json'} has no result for {', '.join(missing)}")
    curves = {m: _adapt_curves(work / f"adapt-{m}") for m in methods}
    base = methods[0]  # the standard baseline

    def cells(flags: dict[str, list[bool]], control: dict[str, list[bool]]) -> list[str]:
        out = []
        for m in methods:
            out += [f"{sum(flags[m]) / len(flags[m]):.3f}", _paired_flags(flags[m], control[m])]
            if m != base:
                out.append(_paired_flags(flags[m], flags[base]))
        return out

    header = ["language", "verses"]
    for m in methods:
        header += [f"{m}", "vs control"] + ([f"vs {base}"] if m != base else [])
    lines = [f"# Mini-model adaptation: English -> {len(languages)} languages (CPU pipeline)", "",
             f"Pretrained model: `{pretrain}`. Each method trains every language's embeddings in one job "
             f"({curves[base]['step'][-1]} steps, each step one batch of every language); the packs are "
             "plugged into the same English-fine-tuned model.", "",
             f"English (source) accuracy: **{cls['source']['accuracy']:.3f}**; chance (majority class): "
             f"{_rate(cls['chance_majority'].get('majority'))}.", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    per_language = {}
    for c in languages:
        flags = {m: _flags(results[(m, c)]["correct"]) for m in methods}
        control = {m: _flags(results[(m, c)]["control_correct"]) for m in methods}
        per_language[c] = {m: sum(flags[m]) / len(flags[m]) for m in methods}
        lines.append(f"| {language_name(c)} ({c}) | {len(flags[base])} | " + " | ".join(cells(flags, control)) + " |")
    common, flags, control = _verse_means(results, methods, languages)
    lines.append(f"| **average** | {len(common)} | " + " | ".join(cells(flags, control)) + " |")
    lines += ["", "Accuracy; vs control / vs standard: the difference in points on the same verses, with one "
              "standard error of the paired difference (* beyond two). Average: per verse the mean over "
              f"languages, on the {len(common)} test verses every language has.", "",
              "Step-2 compute, each method's one job over all languages:", "",
              "| method | step-2 FLOPs | vs standard | step-2 train time (s) | speedup vs standard | one-time prep (s) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for m in methods:
        f, t = curves[m]["flops"][-1], curves[m]["seconds"][-1]
        fewer, faster = (("-", "-") if m == base else
                         (f"{curves[base]['flops'][-1] / f:.2f}x fewer", f"{curves[base]['seconds'][-1] / t:.2f}x"))
        lines.append(f"| {m} | {f:.3g} | {fewer} | {t:.0f} | {faster} | {_prep_cell((prep or {}).get(m), timings)} |")
    lines += ["", "![per-language accuracy](languages.png)", "",
              "Wall-clock of each pipeline step (s, including start-up): " +
              ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]

    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(languages) + 3), 4))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        ax.bar([x + (i - (len(methods) - 1) / 2) * width for x in range(len(languages))],
               [per_language[c][m] for c in languages], width, label=m)
    if cls["chance_majority"].get("majority") is not None:
        ax.axhline(cls["chance_majority"]["majority"], color="k", ls="--", lw=1, label="majority class")
    ax.set(title="verse genre, zero-shot transfer from English", ylabel="accuracy",
           xticks=list(range(len(languages))), xticklabels=languages)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(work / "languages.png", dpi=110)
    plt.close(fig)
    out = work / "report.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def _flags(bits: str) -> list[bool]:
    return [c == "1" for c in bits]


def _paired_flags(a, b) -> str:
    """_paired_cell for per-example values (bools, or per-verse means over languages)."""
    from ds_minimodel.tasks.metrics import paired_difference

    diff, se = paired_difference(a, b)
    return f"{100 * diff:+.1f} ± {100 * se:.1f}{'*' if abs(diff) > 2 * se else ''}"


def _verse_means(results: dict, methods, languages) -> tuple[list[str], dict, dict]:
    """The verse ids every language's test set has, and per method the mean over languages of
    each such verse's right (1) / wrong (0), for the pack and for its control."""
    by_id = {key: {i: (a == "1", b == "1") for i, a, b in zip(r["ids"], r["correct"], r["control_correct"])}
             for key, r in results.items()}
    first = results[(methods[0], languages[0])]["ids"]
    common = [i for i in first if all(i in by_id[(m, c)] for m in methods for c in languages)]
    mean = {m: [sum(by_id[(m, c)][i][0] for c in languages) / len(languages) for i in common] for m in methods}
    control = {m: [sum(by_id[(m, c)][i][1] for c in languages) / len(languages) for i in common] for m in methods}
    return common, mean, control
