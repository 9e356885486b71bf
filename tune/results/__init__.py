"""What a search leaves: its record (:mod:`.record`), the table and curves
(:mod:`.outputs`), the cost table, and the MLflow tracking (:mod:`.tracking`,
:mod:`.tracking_uri`)."""
