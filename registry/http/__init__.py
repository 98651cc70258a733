"""The registry's web pages (``/ui``) and what the server's playground shares with them."""
