"""Data pipeline: shard format (shards), GPT-2 tokenizer (tokenizer), shard making (prepare), loading (loader).

Nothing is imported here, so `python -m data.prepare` and the tokenizer workers never pay for importing torch.
"""
