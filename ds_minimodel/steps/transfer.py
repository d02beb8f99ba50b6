"""Step 4: plug a language pack into a model and evaluate zero-shot in the new language.

Nothing trains here. For each pack: its compatibility is checked (hidden size, special tokens,
and the fingerprint of the body it was trained under against the fingerprints of the pretrained
body the fine-tuned model came from), its word table and output bias replace the model's, its
tokenizer replaces the source tokenizer, and the task's target-language test set is scored.
A control plugs in untrained random embeddings the same way.

Classification reports accuracy (a fraction); extractive QA reports SQuAD/MLQA exact match and
F1 in percent, as the official scripts print them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ds_minimodel.artefacts.langpack import PackInfo, check_compatible, load_pack
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.artefacts.surgery import plug_embeddings, plugged_encoder
from ds_minimodel.config import FinetuneConfig, from_dict
from ds_minimodel.errors import UserError
from ds_minimodel.model import MLMEncoder
from ds_minimodel.steps.finetune.classification import correct_flags
from ds_minimodel.steps.finetune.common import (
    load_classifier,
    load_finetuned,
    with_vocab,
)
from ds_minimodel.steps.finetune.qa import (
    TRAIN_LANGUAGE,
    answer_language,
    encode_for,
    qa_scores,
)
from ds_minimodel.tasks.batching import encode_texts, pad_sequences
from ds_minimodel.tasks.bible import (
    MAX_RETRIEVAL_PAIRS,
    retrieval_sample,
    verse_retrieval_pairs,
)
from ds_minimodel.tasks.formats import load_task as load_split
from ds_minimodel.tasks.formats import task_file
from ds_minimodel.tasks.metrics import retrieval_metrics
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.base import Tokenizer
from ds_minimodel.tokenizers.layout import layout_for


def _encoder_state(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def plugged_model(model, info: PackInfo, tensors: dict, lineage: dict, where: str):
    """A copy of the fine-tuned model (classifier or QA) speaking the pack's language."""
    fps = lineage["body_fingerprints"]
    check_compatible(info, hidden_size=model.encoder.cfg.hidden_size, pad_token_id=model.encoder.cfg.pad_token_id,
                     body_fingerprint=fps.get(str(info.mini_depth), "none"), where=where)
    state = model.state_dict()
    enc, cfg = plug_embeddings(_encoder_state(state, "encoder."), model.encoder.cfg, tensors["word"],
                               tensors["output_bias"], info.pad_token_id)
    new = with_vocab(model, cfg.vocab_size)
    new.load_state_dict({**{f"encoder.{k}": v for k, v in enc.items()},
                         **{k: v for k, v in state.items() if not k.startswith("encoder.")}}, strict=True)
    return new.eval()



def random_control(info: PackInfo, tensors: dict, seed: int = 0) -> dict:
    """Untrained embeddings for the pack's vocabulary with the trained table's scale."""
    g = torch.Generator().manual_seed(seed)
    word = torch.randn(tensors["word"].shape, generator=g) * float(tensors["word"].std())
    return {"word": word, "output_bias": torch.zeros_like(tensors["output_bias"])}


def evaluate_classification(model_dir: str, packs: list[str], task, batch_size: int = 32) -> dict:
    """English (source) accuracy, and per pack the target-language accuracy and its control."""
    model, config, lineage = load_classifier(model_dir)
    src_tok = load_tokenizer(lineage["tokenizer"])
    max_len = config["task"]["max_len"]
    source = task.tests[task.train_language]
    source_correct = _correct(model, source, src_tok, max_len, batch_size)
    result = {"task": task.name, "chance_majority": task.meta.get("chance", {}),
              # Per example too: two models' English accuracies pair on the same verses.
              "source": {"language": task.train_language, "accuracy": _mean(source_correct),
                         "correct": _bits(source_correct), "ids": [ex.id for ex in source]},
              "packs": {}}
    for pack_dir in packs:
        info, tensors, tok = load_pack(pack_dir)
        test = task.test_in(info.language)  # the pack's language picks the test set
        plugged = plugged_model(model, info, tensors, lineage, str(model_dir))
        control = plugged_model(model, info, random_control(info, tensors), lineage, str(model_dir))
        correct = _correct(plugged, test, tok, max_len, batch_size)
        control_correct = _correct(control, test, tok, max_len, batch_size)
        missing = task.meta.get("target_tests", {}).get(info.language, {}).get("missing")
        result["packs"][str(pack_dir)] = {
            "method": info.method, "language": info.language, "examples": len(test),
            # Test verses the language's Bible lacks (dropped from its test set only).
            **({"missing_examples": missing} if missing else {}),
            "accuracy": _mean(correct), "control_accuracy": _mean(control_correct),
            # Per example, in test-set order, as "0"/"1": lets a report pair any two methods
            # (or a method and its control) on the same examples (`paired_difference`).
            "correct": _bits(correct), "control_correct": _bits(control_correct),
            # The verse (example) id of each position: aligns languages whose test sets differ
            # by the verses a Bible lacks (the many-languages report's average).
            "ids": [ex.id for ex in test],
        }
    return result


def _correct(model, examples, tok: Tokenizer, max_len: int, batch_size: int) -> list[bool]:
    """Whether the model classifies each example right, in order."""
    enc = encode_texts(examples, tok, max_len, layout_for(model.encoder.cfg))
    return correct_flags(model, enc.ids, [ex.label for ex in examples], tok.pad_id, batch_size,
                         type_ids=enc.type_ids)


def _mean(flags: list[bool]) -> float:
    return sum(flags) / max(len(flags), 1)


def _bits(flags: list[bool]) -> str:
    return "".join("1" if f else "0" for f in flags)


def evaluate_qa(model_dir: str, packs: list[str], task_path: str | None = None, batch_size: int = 32) -> dict:
    """Extractive QA: English exact match / F1 (percent) of the fine-tuned model, and per pack
    those of the model with the pack plugged in and of its random-embedding control, on the
    SQuAD-format test set of the pack's language (MLQA's `test-context-<l>-question-<l>.json`
    layout) under `task_path` (default: the fine-tuning task directory)."""
    model, config, lineage = load_finetuned(model_dir)
    task = config["task"]
    if task.get("kind") != "qa":
        raise UserError(f"{model_dir} is not an extractive QA model (task kind {task.get('kind', 'classification')!r})")
    task_path = task_path or from_dict(FinetuneConfig, config["finetune"]).finetune.task_path
    src_tok = load_tokenizer(lineage["tokenizer"])

    def scores(m, examples, tok, lang) -> dict:
        return qa_scores(m, encode_for(m.encoder.cfg, examples, tok, task), examples, batch_size,
                         lang=answer_language(task["name"], lang))

    try:  # English test when there is one (MLQA's), else the English validation set
        task_file("mlqa", task_path, TRAIN_LANGUAGE, "test")
        split = "test"
    except UserError:
        split = "validation"
    source = load_split("mlqa", task_path, TRAIN_LANGUAGE, split)
    result = {"task": task["name"], "metric": "exact_match / f1 (percent)",
              "source": {"language": TRAIN_LANGUAGE, "split": split, "questions": len(source),
                         **scores(model, source, src_tok, TRAIN_LANGUAGE)},
              "packs": {}}
    for pack_dir in packs:
        info, tensors, tok = load_pack(pack_dir)
        plugged = plugged_model(model, info, tensors, lineage, str(model_dir))  # refuses a foreign pack first
        control = plugged_model(model, info, random_control(info, tensors), lineage, str(model_dir))
        test = load_split("mlqa", task_path, info.language, "test")
        ours, ctrl = scores(plugged, test, tok, info.language), scores(control, test, tok, info.language)
        result["packs"][str(pack_dir)] = {
            "method": info.method, "language": info.language, "questions": len(test),
            "exact_match": ours["exact_match"], "f1": ours["f1"],
            "control_exact_match": ctrl["exact_match"], "control_f1": ctrl["f1"],
        }
    return result


@torch.no_grad()
def mean_pooled(model: MLMEncoder, texts: list[str], tok: Tokenizer, layer: int, batch_size: int = 64,
                max_len: int = 128) -> torch.Tensor:
    """Mean of layer `layer`'s hidden states over each text's non-pad tokens."""
    model.eval()
    rows = []
    for i in range(0, len(texts), batch_size):
        ids = [[tok.bos_id] + tok.encode(t)[:max_len - 2] + [tok.eos_id] for t in texts[i:i + batch_size]]
        input_ids, mask = pad_sequences(ids, tok.pad_id)
        h = model.encode(input_ids, mask, depth=layer)[layer]
        m = mask.unsqueeze(-1).to(h.dtype)
        rows.append((h * m).sum(1) / m.sum(1))
    return torch.cat(rows)


def evaluate_retrieval(pretrained_dir: str, packs: list[str], pairs=None, layer: int | None = None, *,
                       max_pairs: int | None = None) -> dict:
    """English<->target verse retrieval: English through the pretrained model with its own
    tokenizer, the target language through the same body with each pack plugged in.

    `pairs` (VersePair-s) are scored for every pack; by default each pack gets the held-out
    pairs of its own language (`verse_retrieval_pairs(language=pack language)`): the same
    English verses for every language, less those its Bible lacks."""
    max_pairs = MAX_RETRIEVAL_PAIRS if max_pairs is None else max_pairs
    state, cfg, lineage = read_model_dir(pretrained_dir)
    layer = layer or max(1, cfg.num_layers // 2)
    src_tok = load_tokenizer(lineage["tokenizer"])
    model = MLMEncoder(cfg)
    model.load_state_dict(state, strict=True)
    max_len = min(128, cfg.max_positions - cfg.pad_token_id - 1)  # RoBERTa positions start at pad + 1
    # English is pooled once, for every verse any language may use; a language's rows are picked.
    sample = [(p.id, p.english) for p in pairs] if pairs is not None else \
        list(retrieval_sample("heldout", max_pairs=max_pairs))
    english = mean_pooled(model, [text for _, text in sample], src_tok, layer, max_len=max_len)
    row = {vid: i for i, (vid, _) in enumerate(sample)}
    result = {"layer": layer, "pairs": len(sample), "packs": {}}
    for pack_dir in packs:
        info, tensors, tok = load_pack(pack_dir)
        lang_pairs = pairs if pairs is not None else verse_retrieval_pairs("heldout", max_pairs=max_pairs,
                                                                           language=info.language)
        source = english[torch.tensor([row[p.id] for p in lang_pairs], dtype=torch.long)]
        check_compatible(info, hidden_size=cfg.hidden_size, pad_token_id=cfg.pad_token_id,
                         body_fingerprint=lineage["body_fingerprints"].get(str(info.mini_depth), "none"),
                         where=str(pretrained_dir))
        scores = {}
        for name, t in (("pack", tensors), ("control", random_control(info, tensors))):
            target_model = plugged_encoder(state, cfg, t, info.pad_token_id)
            scores[name] = retrieval_metrics(source, mean_pooled(target_model, [p.target for p in lang_pairs], tok,
                                                                   layer, max_len=max_len))
        dropped = getattr(lang_pairs, "meta", {}).get("dropped", {})
        result["packs"][str(pack_dir)] = {"method": info.method, "language": info.language, "pairs": len(lang_pairs),
                                          **({"dropped": dropped} if any(dropped.values()) else {}),
                                          "top1": scores["pack"]["top1"],
                                          "mrr": scores["pack"]["mrr"], "control_top1": scores["control"]["top1"],
                                          "control_mrr": scores["control"]["mrr"]}
    return result


def write_json(result: dict, out: str | Path) -> Path:
    import json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return out
