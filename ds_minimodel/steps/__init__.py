"""The pipeline's steps, one module each, in the order they run (README, "The pipeline"):

1.  pretrain.py   MiniJoint pretraining: the whole encoder, final + mid-layer MLM heads
1b. minipost.py   MiniPost: frozen layers 1..k of a pretrained encoder under a small trained top
2.  adapt/        a new language's embeddings, trained through the frozen (mini-)model
                  (single.py, multi.py for several languages in one job, common.py)
3.  finetune/     body + task head on source-language task data, embeddings frozen
                  (classification.py, qa.py, and common.py for what both share)
4.  transfer.py   plug a language pack into the fine-tuned model and evaluate zero-shot

What each step trains is `ds_minimodel.method.rules` (the FLOP count reads it too); mlm_job.py is
the masked-LM job that steps 1, 1b and 2 share. Each step runs on the shared training
infrastructure in `ds_minimodel.training` and hands the next one an artefact
(`ds_minimodel.artefacts`: model directories and language packs).
"""
