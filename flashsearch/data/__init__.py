"""Text to token shards, once: the tokenizers, the document readers, `flashsearch data prepare` and the lazy reader.

  tokenizer.py  the tokenizers: raw bytes, our byte-level BPE (trained once, cached per machine), a user's
                tokenizer.json; bytes of each token, so scores stay bits per byte of text
  sources.py    documents streamed from .txt / .jsonl / .parquet files, a saved Hugging Face dataset or a named
                corpus, and the fixed validation split (the byte corpus's rules)
  prepare.py    documents -> token shards + manifest.json, streaming, atomic (manifest last)
  shards.py     the manifest format and the lazy, memory-mapped reader the quality proxy trains on

Import the submodules directly (shards.py and prepare.py import torch; `tokenizers` is imported on use).
See docs/data.md.
"""
