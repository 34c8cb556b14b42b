"""What a run records and shows: trajectory traces and events, stats, metrics, terminal casts, the run dir read back."""
