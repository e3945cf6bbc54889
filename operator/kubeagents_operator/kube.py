"""The operator's writes to the Kubernetes API: status patches and Events.

kopf watches and indexes the objects; the run's long-running loop writes its status itself
(a kopf daemon's `patch` is applied only when the handler returns), with the credentials kopf
found (`kopf.login_with_service_account`, else `kopf.login_with_kubeconfig`).
"""

from __future__ import annotations

import base64
import datetime
import ssl
import tempfile
from pathlib import Path
from typing import Any

import httpx
import kopf

GROUP = "kubeagents.io"
VERSION = "v1alpha1"


def _data(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return raw if raw.lstrip().startswith(b"-----") else base64.b64decode(raw)


class KubeClient:
    """A small async client of the API server for the operator's own writes."""

    def __init__(self, info: Any) -> None:
        context = ssl.create_default_context()
        if info.ca_path:
            context.load_verify_locations(cafile=str(info.ca_path))
        elif info.ca_data:
            context.load_verify_locations(cadata=_data(info.ca_data).decode())
        self._keep = tempfile.TemporaryDirectory(prefix="kubeagents-operator-")
        certificate, key = info.certificate_path, info.private_key_path
        if info.certificate_data and info.private_key_data:
            certificate = Path(self._keep.name) / "client.crt"
            key = Path(self._keep.name) / "client.key"
            certificate.write_bytes(_data(info.certificate_data))
            key.write_bytes(_data(info.private_key_data))
        if certificate and key:
            context.load_cert_chain(str(certificate), str(key))
        headers = {"authorization": f"Bearer {info.token}"} if info.token else {}
        self.http = httpx.AsyncClient(
            base_url=info.server, verify=context, headers=headers, timeout=30
        )

    @classmethod
    def discover(cls) -> KubeClient:
        settings = kopf.OperatorSettings()
        info = kopf.login_with_service_account(settings=settings)
        if info is None:
            info = kopf.login_with_kubeconfig(settings=settings)
        if info is None:
            raise RuntimeError("no Kubernetes credentials: no service account, no kubeconfig")
        return cls(info)

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        response = await self.http.patch(
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}/status",
            json={"status": status},
            headers={"content-type": "application/merge-patch+json"},
        )
        if response.status_code == 404:
            return  # deleted meanwhile
        response.raise_for_status()

    async def event(
        self,
        *,
        kind: str,
        namespace: str,
        name: str,
        uid: str,
        reason: str,
        message: str,
        warning: bool = False,
    ) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        body = {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "name": name,
                "namespace": namespace, "uid": uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "kubeagents-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }  # fmt: skip
        response = await self.http.post(f"/api/v1/namespaces/{namespace}/events", json=body)
        response.raise_for_status()

    async def aclose(self) -> None:
        await self.http.aclose()
        self._keep.cleanup()
