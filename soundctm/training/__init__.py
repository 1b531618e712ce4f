"""Training: teacher (EDM) training and, later, SoundCTM distillation.

No printing here: the loops emit :mod:`soundctm.events`; the CLI renders them.
"""
