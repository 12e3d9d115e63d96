"""asv front end: thin classes that time the same scenarios the suite runs."""
