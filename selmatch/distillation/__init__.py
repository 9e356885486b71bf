"""Stage 2, trajectory matching: the matching loss (:mod:`.matching`), the speed and memory
levers, SeqMatch's stages, the set a run makes (:mod:`.target`), the registered methods
(:mod:`.methods`) and the distillation loop (:mod:`.distill`)."""
