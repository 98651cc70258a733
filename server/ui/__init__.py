"""The server's web page (``/ui``): a chat playground and live per-adapter metrics."""
