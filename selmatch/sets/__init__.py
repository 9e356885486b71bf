"""The synthetic set as a file: :class:`~selmatch.sets.synthetic.SyntheticSet` (save, load,
manifest) and its export to other tools."""
