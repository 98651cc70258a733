"""Names both ends of the wire must agree on, defined once: metric names, ``x-loramux-*``
headers, ``LORAMUX_*`` variables, and the rule that says which answers are errors.

One side writes each of them and another reads it: ``loramux serve`` exports the metrics that
the rollout watcher scrapes and the playground sums, it names each answer's adapter in the
header the eval gate checks, and clients read the variables that servers and the CLI document.
Spelled twice, a rename on one side would leave the other reading nothing (a watcher that sees
zero requests never rolls back). This module imports nothing, so every part may use it.
"""

from __future__ import annotations

# -- Prometheus series of `loramux serve` that others read, as a scraper sees them -------------
# (server/metrics.py declares them; a histogram's series end in _sum, _count and _bucket)

REQUESTS = "loramux_requests_total"  # counter {endpoint, adapter, status, version}
PROMPT_TOKENS = "loramux_prompt_tokens_total"  # counter {adapter}
COMPLETION_TOKENS = "loramux_completion_tokens_total"  # counter {adapter}
TTFT = "loramux_time_to_first_token_seconds"  # histogram {adapter, version}
LATENCY = "loramux_request_latency_seconds"  # histogram {adapter}
ADAPTER_LOADS = "loramux_adapter_loads_total"  # counter {adapter}
BASE_MODEL_LOADS = "loramux_base_model_loads_total"  # counter: 1 for the server's life

# -- HTTP headers ------------------------------------------------------------------------------

DIGEST_HEADER = "x-loramux-adapter-digest"  # the manifest digest that answered, or `base`
REF_HEADER = "x-loramux-adapter-ref"  # the version that answered, `name@N`
USER_HEADER = "x-loramux-user"  # sticks a caller to one canary side when the body has no `user`
ACTOR_HEADER = "x-loramux-actor"  # a registry client's name for the audit log

# -- environment variables a client reads ------------------------------------------------------

ENV_REGISTRY = "LORAMUX_REGISTRY"  # the registry: a folder or an http(s):// URL
ENV_TOKEN = "LORAMUX_TOKEN"  # bearer token for a registry server
ENV_API_KEY = "LORAMUX_API_KEY"  # API key for a `loramux serve`

# -- the error-rate rule -----------------------------------------------------------------------

# Refused before any work (429) or the client went away (499): says nothing about the version.
NOT_COUNTED = frozenset({"429", "499"})


def counted(status: str) -> bool:
    """Whether an answer with this HTTP status counts towards a version's error rate."""
    return status not in NOT_COUNTED


def is_error(status: str) -> bool:
    """An error, by the one rule the rollout watcher and the playground share: a counted
    answer other than 2xx."""
    return counted(status) and not status.startswith("2")

# -- HTTP connections --------------------------------------------------------------------------

# Seconds `loramux serve` and `loramux registry serve` keep an idle client connection open.
# Longer than clients' own idle-pool expiry (httpx 5 s, which the openai client and loramux's
# registry client use; aiohttp 15 s) and a load balancer's idle timeout (60 s): then the client
# closes idle connections, and never sends a request on one that the server is closing at that
# instant, which it would see as "Server disconnected without sending a response" (uvicorn's
# default is 5 s, exactly httpx's expiry). 75 s is nginx's default.
KEEP_ALIVE_S = 75

# Seconds a client gets to send a request's line and headers, from the moment its connection
# opens (and again for each next request on a kept-alive one); then the connection is closed.
# Real clients send them in one packet; a slowloris client would hold a connection forever.
HEADER_TIMEOUT_S = 10
# Connections plus requests in flight a server holds at once; past it uvicorn answers 503.
MAX_CONNECTIONS = 1024
# Peers whose X-Forwarded-Proto/-For are believed (a TLS proxy on this machine); comma list,
# `*` for any, empty for none. The scheme decides the login cookie's `Secure` and the origin.
FORWARDED_ALLOW_IPS = "127.0.0.1,::1"

# Their help texts, one wording for `loramux serve` (server/settings.py) and `registry serve`.
KEEP_ALIVE_HELP = "Seconds an idle client connection is kept open."
HEADER_TIMEOUT_HELP = ("Seconds a connection gets to send a request's headers; then it is "
                       "closed (slow or half-sent requests hold nothing).")
MAX_CONNECTIONS_HELP = "Open connections plus requests in flight; past it new requests get 503."
FORWARDED_HELP = ("Proxies whose X-Forwarded-Proto/-For are believed (comma-separated IPs, * for "
                  "any, empty for none): put a TLS proxy's address here so the login cookie is "
                  "Secure.")
