"""Difficulty scores as data: the registered score kinds (:mod:`.score_kinds`) and score
tables (:mod:`.scores`). Above :mod:`selmatch.core` and :mod:`selmatch.data` only."""
