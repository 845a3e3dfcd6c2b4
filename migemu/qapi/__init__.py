"""migemu."""
