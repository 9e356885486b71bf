"""What a search is: the registered phases (:mod:`.phase_kinds`), its settings
(:mod:`.config`) and the presets. Imports no Ray."""
