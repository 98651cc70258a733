"""Adapters from and to the Hugging Face Hub, through ``huggingface_hub`` (its cache, its auth:
``HF_TOKEN``, its offline mode ``HF_HUB_OFFLINE``, its endpoint ``HF_ENDPOINT``).

It lives outside ``loramux.registry`` on purpose: the registry stores and never calls out; this
package fetches from the Hub, checks what it fetched like any push, and publishes through the
registry's one push path, recording where the files came from (repo, resolved commit, each
file's sha256) in the version's lineage.
"""

from loramux.hub.errors import HubError
from loramux.hub.export import export_to_hub
from loramux.hub.importer import import_from_cache, import_from_hub
from loramux.hub.refs import HubRef

__all__ = ["HubError", "HubRef", "export_to_hub", "import_from_cache", "import_from_hub"]
