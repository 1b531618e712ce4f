"""The engine: schedules, preconditioning, the CTM wrapper, guidance, samplers, the pipeline.

Maths lives in small pure functions (:mod:`schedule`, :mod:`ctm`, :mod:`guidance`,
:mod:`solvers`); :mod:`pipeline` composes the components a checkpoint names.
"""
