"""Step 4: plug language packs into a fine-tuned model and evaluate zero-shot transfer.

    python launchers/evaluate.py --model runs/finetune/final --pack runs/adapt-minijoint/pack \
        --pack runs/adapt-full/pack --pretrained runs/demo/final --out runs/transfer.json

Prints source-language accuracy (an extractive QA model: exact match and F1, in percent), each
pack's target-language score against a control with untrained random embeddings, and (with
--pretrained) English<->target verse retrieval. The Bible tasks score each pack in its own
language (its pack.json `language`, AdaptConfig.language): any language of the Bible table, or one
prepared from a Bible file of your own (prepare_data.py --bible-file; --bible-file CODE=PATH here
where the file the pack records has moved). QA test sets are SQuAD-format files named as
MLQA's (`test-context-<lang>-question-<lang>.json`) under --task-path (default: the directory the
model was fine-tuned from).
"""

import argparse
import json

from ds_minimodel.cli.common import run_main


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="fine-tuned model directory (step 3's final/)")
    p.add_argument("--pack", action="append", default=[], help="language pack directory (repeatable)")
    p.add_argument("--pretrained", default=None, help="pretrained model directory, for verse retrieval")
    p.add_argument("--retrieval-pairs", type=int, default=1000)
    p.add_argument("--retrieval-layer", type=int, default=None, help="hidden layer to pool (default L/2)")
    p.add_argument("--task-path", default=None,
                   help="QA only: directory of the target-language test files (default: the fine-tuning task_path)")
    p.add_argument("--bible-file", action="append", default=[], metavar="CODE=PATH",
                   help="the Bible file of a language outside the table (a pack adapted on one records it; this "
                        "names it where it has moved); repeatable")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    def body():
        from ds_minimodel.config import FinetuneConfig, from_dict
        from ds_minimodel.data import user_bible
        from ds_minimodel.steps import transfer
        from ds_minimodel.steps.finetune.classification import load_task
        from ds_minimodel.steps.finetune.common import load_finetuned

        for value in args.bible_file:  # before any pack registers its own record of the same language
            user_bible.register(*user_bible.parse_bible_file_option(value))
        _, config, _ = load_finetuned(args.model)
        if config["task"].get("kind") == "qa":
            result = {"qa": transfer.evaluate_qa(args.model, args.pack, args.task_path)}
        else:
            task = load_task(from_dict(FinetuneConfig, config["finetune"]))
            result = {"classification": transfer.evaluate_classification(args.model, args.pack, task)}
        if args.pretrained and args.pack:  # each pack on the held-out verse pairs of its own language
            result["retrieval"] = transfer.evaluate_retrieval(args.pretrained, args.pack, layer=args.retrieval_layer,
                                                              max_pairs=args.retrieval_pairs)
        print(json.dumps(result, indent=2))
        if args.out:
            transfer.write_json(result, args.out)

    run_main(body)


if __name__ == "__main__":
    main()
