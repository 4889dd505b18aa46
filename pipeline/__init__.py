"""Distributed batch inference over text corpora: Ray Data + vLLM, Parquet out.

Importing this package is cheap; Ray, vLLM and torch load only inside the commands.
"""

__version__ = "0.1.0"
