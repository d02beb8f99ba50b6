"""Downstream tasks: example types, loaders, the offline Bible stand-ins, metrics, batching.

- `formats`: `ClassificationExample`, `QAExample`, `TaskData`; loaders for the released
  XNLI, PAWS-X and MLQA files (`load_task`, `task_data`) and an offline-only Hugging Face
  path (`from_hf_datasets`).
- `bible`: verse -> genre and verse -> testament classification (English train, paired
  English/target-language test) and
  English <-> target verse retrieval, in any language of the Bible table, all on chapters held
  out of every training corpus.
- `metrics`: macro-F1, SQuAD/MLQA exact match and F1, retrieval top-1 and MRR.
- `batching`: examples -> tensors in the model family's layout (RoBERTa or BERT:
  `ds_minimodel.tokenizers.layout`), QA windows and span decoding.
"""

from ds_minimodel.tasks.batching import EncodedTexts, QAFeatures, encode_qa, encode_texts, qa_predictions, span_text
from ds_minimodel.tasks.bible import (
                                        VersePair,
                                        VersePairs,
                                        verse_genre_task,
                                        verse_retrieval_pairs,
                                        verse_testament_task,
)
from ds_minimodel.tasks.formats import (
                                        MLQA_LANGUAGES,
                                        PAWSX_LABELS,
                                        PAWSX_LANGUAGES,
                                        TASKS,
                                        XNLI_LABELS,
                                        XNLI_LANGUAGES,
                                        ClassificationExample,
                                        QAExample,
                                        TaskData,
                                        from_hf_datasets,
                                        load_task,
                                        read_pawsx_tsv,
                                        read_squad_json,
                                        read_xnli_tsv,
                                        task_data,
                                        task_file,
)
from ds_minimodel.tasks.metrics import (
                                        exact_match_score,
                                        f1_score,
                                        macro_f1,
                                        normalize_answer,
                                        paired_difference,
                                        qa_metrics,
                                        retrieval_metrics,
)

__all__ = [
    "ClassificationExample", "QAExample", "TaskData", "TASKS", "XNLI_LABELS", "PAWSX_LABELS", "XNLI_LANGUAGES",
    "PAWSX_LANGUAGES", "MLQA_LANGUAGES", "load_task", "task_data", "task_file", "from_hf_datasets",
    "read_xnli_tsv", "read_pawsx_tsv", "read_squad_json",
    "VersePair", "VersePairs", "verse_genre_task", "verse_testament_task", "verse_retrieval_pairs",
    "paired_difference", "macro_f1", "normalize_answer", "exact_match_score", "f1_score", "qa_metrics",
    "retrieval_metrics",
    "EncodedTexts", "encode_texts",
    "QAFeatures", "encode_qa",
    "qa_predictions", "span_text",
]
