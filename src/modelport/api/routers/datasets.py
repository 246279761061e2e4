"""/v1/datasets: upload, list, get and delete training datasets (each visible to its owner and admins)."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from modelport.api.deps import Caller, Client, Ctx
from modelport.api.routers._json import json_response, page
from modelport.errors import BadRequest
from modelport.registry import datasets

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _text(form: FormData, key: str) -> str | None:
    value = form.get(key)
    if isinstance(value, UploadFile):
        raise BadRequest(message=f"send {key!r} as a plain form field, not a file")
    return value


@router.post(
    "",
    status_code=201,
    summary="Upload a dataset (multipart: 'file', 'name', optional 'format' and 'description')",
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "name": {"type": "string"},
                            "format": {"type": "string", "enum": list(datasets.FORMATS)},
                            "description": {"type": "string"},
                        },
                        "required": ["file", "name"],
                    }
                }
            },
            "required": True,
        }
    },
)
async def upload_dataset(request: Request, ctx: Ctx, who: Caller, client: Client) -> Response:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest(message="upload a dataset as multipart/form-data with 'file' and 'name' parts")
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("file")
        name = _text(form, "name")
        if not isinstance(upload, UploadFile):
            raise BadRequest(message="no file uploaded: send the dataset as multipart field 'file'")
        if not name:
            raise BadRequest(message="give the dataset's name as form field 'name'")
        fmt, description = _text(form, "format") or None, _text(form, "description") or ""
        view = await anyio.to_thread.run_sync(
            lambda: datasets.create_dataset(
                ctx.db,
                ctx.store,
                who,
                name=name,
                filename=upload.filename or "",
                stream=upload.file,
                format=fmt,
                description=description,
                client=client,
            )
        )
    return json_response(view, 201)


@router.get("", summary="List your datasets (admins: all), by name")
def list_datasets(
    ctx: Ctx,
    who: Caller,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    items, total = datasets.list_datasets(ctx.db, who, limit=limit, offset=offset)
    return json_response(page(items, total, limit, offset))


@router.get("/{name}", summary="Get a dataset: format, file name, sha256, size, owner")
def get_dataset(name: str, ctx: Ctx, who: Caller) -> Response:
    return json_response(datasets.get_dataset(ctx.db, who, name))


@router.delete("/{name}", status_code=204, summary="Delete a dataset (its owner or an admin)")
def delete_dataset(name: str, ctx: Ctx, who: Caller, client: Client) -> Response:
    datasets.delete_dataset(ctx.db, who, name, client=client)
    return Response(status_code=204)
