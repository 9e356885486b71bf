"""Stage 1, selection: the difficulty window at β (:mod:`.window`), the initialisations
built on it (:mod:`.initial`), coverage-based selection and the consistency score estimate."""
