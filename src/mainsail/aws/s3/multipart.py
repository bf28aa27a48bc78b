"""S3 multipart uploads over an :class:`~mainsail.aws.s3.store.S3Store`: CreateMultipartUpload, UploadPart,
ListParts, ListMultipartUploads and CompleteMultipartUpload (AbortMultipartUpload is the store's own call)."""

from __future__ import annotations

from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from mainsail.aws.s3.files import MAX_PART_NUMBER, S3Error
from mainsail.aws.s3.store import S3Store
from mainsail.aws.s3.wire import (
    completed_parts,
    el,
    iso,
    object_headers,
    read_small,
    receive_body,
    xml_response,
    xml_root,
)


async def create_upload(store: S3Store, request: Request, bucket: str, key: str) -> Response:
    """CreateMultipartUpload: the object's headers and metadata come with this request."""
    meta = object_headers(request)
    meta.key = key
    upload_id = await run_in_threadpool(store.create_upload, bucket, meta)
    root = xml_root("InitiateMultipartUploadResult")
    el(root, "Bucket", bucket)
    el(root, "Key", key)
    el(root, "UploadId", upload_id)
    return xml_response(root)


async def upload_part(store: S3Store, request: Request, bucket: str, key: str, q: dict[str, str]) -> Response:
    upload_id = q.get("uploadId", "")
    try:
        number = int(q.get("partNumber", ""))
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PART_NUMBER:
        raise S3Error("InvalidArgument", 400, f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, "
                      "inclusive", ArgumentName="partNumber", ArgumentValue=q.get("partNumber", ""))
    if "x-amz-copy-source" in request.headers:
        raise S3Error("NotImplemented", 501, "UploadPartCopy is not implemented by mainsail's S3.")
    await run_in_threadpool(store.upload_meta, bucket, upload_id, key)  # before the body
    temp, checksum = await receive_body(store, request)
    etag = await run_in_threadpool(store.put_part, bucket, key, upload_id, number, temp)
    headers = {"ETag": etag}
    if checksum:
        headers[f"x-amz-checksum-{checksum['algorithm']}"] = checksum["value"]
    return Response(status_code=200, headers=headers)


def list_parts(store: S3Store, bucket: str, key: str, q: dict[str, str]) -> Response:
    upload_id = q["uploadId"]
    parts = store.parts(bucket, key, upload_id)
    try:
        marker = int(q.get("part-number-marker", "0") or "0")
        max_parts = min(int(q.get("max-parts", "1000") or "1000"), 1000)
    except ValueError:
        raise S3Error("InvalidArgument", 400, "part-number-marker and max-parts must be integers") from None
    after = [p for p in parts if p.number > marker]
    page = after[:max_parts]
    root = xml_root("ListPartsResult")
    el(root, "Bucket", bucket)
    el(root, "Key", key)
    el(root, "UploadId", upload_id)
    el(root, "PartNumberMarker", marker)
    if page:
        el(root, "NextPartNumberMarker", page[-1].number)
    el(root, "MaxParts", max_parts)
    el(root, "IsTruncated", "true" if len(after) > len(page) else "false")
    el(root, "StorageClass", "STANDARD")
    for part in page:
        item = el(root, "Part")
        el(item, "PartNumber", part.number)
        el(item, "LastModified", iso(part.last_modified))
        el(item, "ETag", part.etag)
        el(item, "Size", part.size)
    return xml_response(root)


def list_uploads(store: S3Store, bucket: str) -> Response:
    root = xml_root("ListMultipartUploadsResult")
    el(root, "Bucket", bucket)
    el(root, "KeyMarker", "")
    el(root, "UploadIdMarker", "")
    el(root, "MaxUploads", 1000)
    el(root, "IsTruncated", "false")
    for upload_id, meta, initiated in store.uploads(bucket):
        item = el(root, "Upload")
        el(item, "Key", meta.key)
        el(item, "UploadId", upload_id)
        el(item, "StorageClass", "STANDARD")
        el(item, "Initiated", iso(initiated))
    return xml_response(root)


async def complete_upload(store: S3Store, request: Request, bucket: str, key: str, upload_id: str) -> Response:
    await run_in_threadpool(store.upload_meta, bucket, upload_id, key)
    wanted = completed_parts(await read_small(request))
    stored = await run_in_threadpool(store.complete_upload, bucket, key, upload_id, wanted)
    root = xml_root("CompleteMultipartUploadResult")
    el(root, "Location", f"{str(request.base_url).rstrip('/')}/{bucket}/{quote(key)}")
    el(root, "Bucket", bucket)
    el(root, "Key", key)
    el(root, "ETag", stored.etag)
    return xml_response(root)
