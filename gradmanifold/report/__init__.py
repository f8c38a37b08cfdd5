"""Results as plain data (model) and their renderings: rich tables (console), the versioned JSON (json)."""
