"""Importers of the official SoundCTM releases into soundctm checkpoints.

Each importer reads the released files in their published format (``torch.load`` with
``weights_only=True``; a file that needs code to unpickle is refused unless the caller opts in),
converts the weights to soundctm's components and writes an ordinary checkpoint folder
(safetensors + ``model.json``) whose card records every source file's SHA-256. The facts they
rely on are in docs/official-models.md.
"""
