"""Talking to OCI distribution registries (Harbor, ECR, GHCR, CNCF distribution).

``OciClient`` speaks the distribution HTTP API for one repository; ``OciLocation`` parses
``oci://host:port/repository``; credentials come from ``LORAMUX_OCI_USERNAME`` /
``LORAMUX_OCI_PASSWORD`` or ``LORAMUX_OCI_TOKEN``.
"""

from loramux.registry.oci.auth import Credentials
from loramux.registry.oci.client import (
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    ManifestInfo,
    OciClient,
    OciManifestBytes,
    UploadSession,
)
from loramux.registry.oci.location import OciLocation, is_oci_url

__all__ = ["MANIFEST_TYPES", "OCI_INDEX", "OCI_MANIFEST", "Credentials", "ManifestInfo",
           "OciClient", "OciLocation", "OciManifestBytes", "UploadSession", "is_oci_url"]
