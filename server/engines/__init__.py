"""Engines behind one small interface, so the HTTP layer never imports vLLM."""
