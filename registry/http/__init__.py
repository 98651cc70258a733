"""The registry server: a thin HTTP layer over :class:`~loramux.registry.store.LocalRegistry`.

- app.py: the API routes (``/v2/...``) and ``loramux registry serve``;
- auth.py: bearer tokens and their scopes (read, write, admin), and the pages' login cookie;
- bodies.py: who may send a request body, and how much of it is read;
- errors.py: every error in one JSON envelope, which the remote client maps back to its class;
- pages.py, views.py, templates/: the web pages under ``/ui`` (the layout, login form and CSS
  both ``/ui`` apps share are ``loramux.web``).

The client side is ``registry/remote.py``; nothing here calls out.
"""
