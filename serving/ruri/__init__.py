"""Offline tooling for the sentence-transformers models served by embeddings/ and rerank/ (Ruri v3 by default):
log and register a model with an alias (register.py), score a registered version on Japanese sets and gate an
alias on the scores (evaluate.py). Both run from ``python -m serving``.
"""
