"""Stage 3, evaluation: a set trained from scratch with its method's augmentation
(:mod:`.evaluate`), and the window sweep that evaluates selections alone (:mod:`.sweep`)."""
