"""Where a search runs: attaching to or starting Ray (:mod:`.ray_cluster`, :mod:`.network`),
the GPUs a worker sees (:mod:`.devices`) and the shared storage Tune writes to
(:mod:`.storage`)."""
