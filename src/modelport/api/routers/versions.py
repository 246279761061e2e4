"""/v1/models/{name}/versions: upload, list, get, update, delete, download files, lineage."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import IO, Annotated
from urllib.parse import quote

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse

from modelport.api.deps import Caller, Client, Ctx
from modelport.api.guards import check_json_depth
from modelport.api.routers._json import json_response, page
from modelport.errors import BadRequest
from modelport.refs import check_name, parse_version
from modelport.registry import lineage, uploads, versions
from modelport.registry.uploads import UploadedFile

router = APIRouter(prefix="/v1/models/{name}/versions", tags=["versions"])

MAX_UPLOAD_FILES = 64
DOWNLOAD_CHUNK = 1024 * 1024


class VersionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(default=None, max_length=10_000)
    status: str | None = Field(default=None, description="ready or archived")


@router.post(
    "",
    status_code=201,
    summary="Upload a new version (multipart: one or more 'file' parts, optional 'manifest' JSON)",
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            },
                            "manifest": {
                                "type": "string",
                                "description": "JSON: format, signature, ...",
                            },
                        },
                        "required": ["file"],
                    }
                }
            },
            "required": True,
        }
    },
)
async def upload_version(name: str, request: Request, ctx: Ctx, who: Caller, client: Client) -> Response:
    check_name(name)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise BadRequest(message="upload a version as multipart/form-data with a 'file' part")
    async with request.form(max_files=MAX_UPLOAD_FILES, max_fields=16) as form:
        files = [
            UploadedFile(filename=f.filename or "", stream=f.file)
            for f in form.getlist("file")
            if isinstance(f, UploadFile)
        ]
        manifest = form.get("manifest")
        if isinstance(manifest, UploadFile):
            manifest_bytes: bytes | str | None = await manifest.read()
        else:
            manifest_bytes = manifest
        if manifest_bytes:
            text = manifest_bytes.encode() if isinstance(manifest_bytes, str) else manifest_bytes
            check_json_depth(text, ctx.settings.max_json_depth, what="the manifest")
        view = await anyio.to_thread.run_sync(
            lambda: uploads.create_version(ctx.db, ctx.store, who, name, files, manifest_bytes, client=client)
        )
    ctx.forget_caches()
    return json_response(view, 201)


@router.get("", summary="List versions, newest first")
def list_versions(
    name: str,
    ctx: Ctx,
    who: Caller,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    items, total = versions.list_versions(ctx.db, who, name, limit=limit, offset=offset)
    return json_response(page(items, total, limit, offset))


@router.get("/{version}", summary="Get a version with its manifest and files")
def get_version(name: str, version: str, ctx: Ctx, who: Caller) -> Response:
    return json_response(versions.get_version(ctx.db, who, name, parse_version(version)))


@router.patch("/{version}", summary="Change a version's description or status (ready/archived)")
def update_version(name: str, version: str, body: VersionUpdate, ctx: Ctx, who: Caller, client: Client) -> Response:
    view = versions.update_version(
        ctx.db,
        who,
        name,
        parse_version(version),
        description=body.description,
        status=body.status,
        client=client,
    )
    ctx.forget_caches()
    return json_response(view)


@router.delete(
    "/{version}",
    status_code=204,
    summary="Delete a version no alias points to (owners)",
)
def delete_version(name: str, version: str, ctx: Ctx, who: Caller, client: Client) -> Response:
    version_id = versions.delete_version(ctx.db, who, name, parse_version(version), client=client)
    ctx.runtime.unload(version_id)
    ctx.forget_caches()
    return Response(status_code=204)


@router.get(
    "/{version}/files/{path:path}",
    summary="Download a file of a version (hash-checked)",
)
def download_file(name: str, version: str, path: str, ctx: Ctx, who: Caller) -> Response:
    sha, _ = versions.find_file(ctx.db, who, name, parse_version(version), path)
    # Decrypted and hash-checked whole before the first byte goes out: a damaged blob is refused with
    # integrity_error, never sent in part. The plaintext copy is an anonymous temp file, gone on close.
    plain = ctx.store.open_verified(sha)
    size = os.fstat(plain.fileno()).st_size
    return StreamingResponse(
        _chunks(plain),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": _attachment(path.rsplit("/", 1)[-1]),
            "X-Content-SHA256": sha,
        },
    )


def _chunks(plain: IO[bytes]) -> Iterator[bytes]:
    with plain:
        while chunk := plain.read(DOWNLOAD_CHUNK):
            yield chunk


def _attachment(filename: str) -> str:
    """The Content-Disposition FileResponse would send (RFC 6266, UTF-8 names percent-encoded)."""
    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


@router.get("/{version}/report", summary="What this version gained and lost against its parent (optimize jobs)")
def get_report(name: str, version: str, ctx: Ctx, who: Caller) -> Response:
    return json_response(versions.report_of(ctx.db, who, name, parse_version(version)))


@router.get("/{version}/lineage", summary="The chain of parents this version came from")
def get_lineage(name: str, version: str, ctx: Ctx, who: Caller) -> Response:
    return json_response({"chain": lineage.chain(ctx.db, who, name, parse_version(version))})
