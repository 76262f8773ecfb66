"""Stage 1: clean, filter and deduplicate multilingual corpora on Ray Data."""
