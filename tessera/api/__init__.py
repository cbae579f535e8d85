"""Wire definitions (.proto sources and the modules generated from them)."""
