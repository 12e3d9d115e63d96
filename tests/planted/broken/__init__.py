"""A family whose scenarios module cannot import: it must not hide the others."""
