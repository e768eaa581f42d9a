"""coopml: decentralized, privacy-preserving cooperative machine learning.

Layers (lower never imports higher): data, models, fusion, he, chain, storage -> roles -> sim -> cli.
"""

__version__ = "0.1.0"
