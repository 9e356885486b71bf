"""The search itself, in the order it runs: the precompute into Ray's object store
(:mod:`.precompute`), the trials (:mod:`.trials`), the concave sampler and its Tune searcher,
a phase as a Tune experiment (:mod:`.phases`), one IPC's search (:mod:`.ipc_search`), the
full evaluations (:mod:`.finals`, :mod:`.slots`) and the driver (:mod:`.search`)."""
