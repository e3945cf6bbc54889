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

    @staticmethod
    def path(plural: str, namespace: str, name: str = "") -> str:
        """The path of our custom objects (`name` empty: the collection)."""
        collection = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}"
        return f"{collection}/{name}" if name else collection

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        await self.patch(plural, namespace, name, {"status": status}, subresource="status")

    async def patch(
        self,
        plural: str,
        namespace: str,
        name: str,
        body: dict[str, Any],
        *,
        subresource: str = "",
    ) -> None:
        """A merge patch; an object deleted meanwhile is no error."""
        path = self.path(plural, namespace, name) + (f"/{subresource}" if subresource else "")
        response = await self.http.patch(
            path, json=body, headers={"content-type": "application/merge-patch+json"}
        )
        if response.status_code == 404:
            return
        response.raise_for_status()

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        response = await self.http.get(self.path(plural, namespace, name))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    async def list_objects(
        self, plural: str, namespace: str, selector: str
    ) -> list[dict[str, Any]]:
        response = await self.http.get(
            self.path(plural, namespace), params={"labelSelector": selector}
        )
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def deployments(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The Deployments of `namespace` that match the label `selector` (read only: the
        operator never creates or scales them)."""
        response = await self.http.get(
            f"/apis/apps/v1/namespaces/{namespace}/deployments", params={"labelSelector": selector}
        )
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def create(self, plural: str, namespace: str, body: dict[str, Any]) -> bool:
        """Create the object; False when one of that name exists already."""
        response = await self.http.post(self.path(plural, namespace), json=body)
        if response.status_code == 409:
            return False
        response.raise_for_status()
        return True

    async def delete(self, plural: str, namespace: str, name: str) -> None:
        response = await self.http.delete(self.path(plural, namespace, name))
        if response.status_code != 404:
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
