"""Small shared helpers: provenance records, atomic writes."""
