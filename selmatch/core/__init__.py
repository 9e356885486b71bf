"""The ground every stage stands on: settings (:mod:`.config`), files (:mod:`.io`, the
artifact kinds of :mod:`.artifacts`, the schema migrations of :mod:`.migrate`), progress bars and
pictures. Imports nothing else of selmatch."""
