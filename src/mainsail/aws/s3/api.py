"""S3's REST/XML API, path style (``PUT /bucket/key``), as botocore sends it to a custom endpoint.

Served by ``mainsail up`` on its own port beside the SageMaker API (see
:func:`mainsail.aws.s3.routes.s3_routes`); the storage is :class:`mainsail.aws.s3.store.S3Store`.
Requests are not authenticated (any credentials work). Bodies are streamed to disk (``aws-chunked``
bodies decoded, their trailing checksum checked) and objects are streamed back from disk, with ranges.
This module dispatches requests and answers the bucket and object operations; listings are
:mod:`mainsail.aws.s3.listing`, multipart uploads :mod:`mainsail.aws.s3.multipart`, the wire format
:mod:`mainsail.aws.s3.wire`.
"""

from __future__ import annotations

import logging
import re
import uuid
from urllib.parse import parse_qs, unquote

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from mainsail.aws.identity import DEFAULT_REGION
from mainsail.aws.s3 import listing, multipart
from mainsail.aws.s3.files import ObjectMeta, S3Error, TempFile
from mainsail.aws.s3.store import S3Store
from mainsail.aws.s3.wire import (
    OWNER_ID,
    delete_request,
    el,
    error_response,
    etag_matches,
    file_chunks,
    http_date,
    iso,
    location_constraint,
    meta_headers,
    object_headers,
    parse_range,
    read_small,
    receive_body,
    request_region,
    xml_response,
    xml_root,
)

logger = logging.getLogger(__name__)
_SURROGATE = re.compile("[\ud800-\udfff]")

_UNSUPPORTED = ("acl", "policy", "tagging", "versioning", "cors", "lifecycle", "website", "logging",
                "notification", "replication", "encryption", "versions", "object-lock", "retention",
                "legal-hold", "torrent", "restore", "select", "attributes", "ownershipControls",
                "publicAccessBlock", "accelerate", "requestPayment", "analytics", "metrics", "inventory",
                "intelligent-tiering")


class S3Api:
    """The S3 operations over one :class:`S3Store`, as an ASGI app."""

    def __init__(self, store: S3Store) -> None:
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body_read = False

        async def tracking_receive() -> Message:
            nonlocal body_read
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read = True
            return message

        request = Request(scope, tracking_receive)
        request_id = uuid.uuid4().hex[:16].upper()
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = unquote(raw_path.decode("latin-1"), errors="surrogateescape")
        bucket, _, key = path.lstrip("/").partition("/")
        try:
            response = await self.handle(request, bucket, key)
        except ClientDisconnect:
            return  # nothing was stored; nobody to answer
        except S3Error as exc:
            response = error_response(exc, request_id, request.method, path)
        except Exception as exc:
            logger.exception("S3 %s %s failed", request.method, path)
            internal = S3Error("InternalError", 500, f"We encountered an internal error: {type(exc).__name__}: {exc}")
            response = error_response(internal, request_id, request.method, path)
        response.headers["x-amz-request-id"] = request_id
        response.headers["x-amz-id-2"] = request_id
        has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
        if has_body and not body_read:
            # answered before the body came (an error, or Expect: 100-continue never granted): the
            # client may not send it, and what it does send must not be read as the next request
            response.headers["Connection"] = "close"
        await response(scope, tracking_receive, send)

    async def handle(self, request: Request, bucket: str, key: str) -> Response:
        method = request.method
        if _SURROGATE.search(bucket) or _SURROGATE.search(key):
            # a percent-escape that is not UTF-8, kept by unquote as a lone surrogate: S3 refuses it so
            raise S3Error("InvalidURI", 400, "Couldn't parse the specified URI.")
        query = parse_qs(request.url.query, keep_blank_values=True)
        q = {name: values[0] for name, values in query.items()}
        if any(name in q for name in _UNSUPPORTED):
            raise S3Error("NotImplemented", 501, "A header or query you provided implies functionality "
                          "that mainsail's S3 does not implement.")
        if not bucket:
            if method in ("GET", "HEAD"):
                return await run_in_threadpool(self.list_buckets, q)
            raise _method_not_allowed(method)
        if not key:
            if method == "PUT":
                return await self.create_bucket(request, bucket)
            if method == "HEAD":
                return await run_in_threadpool(self.head_bucket, bucket)
            if method == "DELETE":
                await run_in_threadpool(self.store.delete_bucket, bucket)
                return Response(status_code=204)
            if method == "GET":
                if "location" in q:
                    return await run_in_threadpool(self.get_bucket_location, bucket)
                if "uploads" in q:
                    return await run_in_threadpool(multipart.list_uploads, self.store, bucket)
                return await run_in_threadpool(listing.list_objects, self.store, bucket, q)
            if method == "POST" and "delete" in q:
                return await self.delete_objects(request, bucket)
            raise _method_not_allowed(method)
        if method == "PUT":
            if "uploadId" in q or "partNumber" in q:
                return await multipart.upload_part(self.store, request, bucket, key, q)
            if "x-amz-copy-source" in request.headers:
                return await self.copy_object(request, bucket, key)
            return await self.put_object(request, bucket, key)
        if method in ("GET", "HEAD"):
            if "uploadId" in q and method == "GET":
                return await run_in_threadpool(multipart.list_parts, self.store, bucket, key, q)
            return await run_in_threadpool(self.get_object, request, bucket, key, q)
        if method == "DELETE":
            if "uploadId" in q:
                await run_in_threadpool(self.store.abort_upload, bucket, key, q["uploadId"])
            else:
                await run_in_threadpool(self.store.delete, bucket, key)
            return Response(status_code=204)
        if method == "POST":
            if "uploads" in q:
                return await multipart.create_upload(self.store, request, bucket, key)
            if "uploadId" in q:
                return await multipart.complete_upload(self.store, request, bucket, key, q["uploadId"])
        raise _method_not_allowed(method)

    # -- buckets --------------------------------------------------------------------------------

    def list_buckets(self, q: dict[str, str]) -> Response:
        root = xml_root("ListAllMyBucketsResult")
        owner = el(root, "Owner")
        el(owner, "DisplayName", "mainsail")
        el(owner, "ID", OWNER_ID)
        buckets = el(root, "Buckets")
        prefix = q.get("prefix", "")
        for bucket in self.store.list_buckets():
            if bucket.name.startswith(prefix):
                item = el(buckets, "Bucket")
                el(item, "Name", bucket.name)
                el(item, "CreationDate", iso(bucket.created))
                el(item, "BucketRegion", bucket.region)
        if prefix:
            el(root, "Prefix", prefix)
        return xml_response(root)

    async def create_bucket(self, request: Request, bucket: str) -> Response:
        constraint = location_constraint(await read_small(request))
        region = request_region(request)
        if region == DEFAULT_REGION:
            if constraint == DEFAULT_REGION:
                raise S3Error("InvalidLocationConstraint", 400, "The specified location-constraint is not valid",
                              LocationConstraint=constraint)
        elif constraint != region:
            raise S3Error("IllegalLocationConstraintException", 400,
                          f"The {constraint or 'unspecified'} location constraint is incompatible for the region "
                          "specific endpoint this request was sent to.")
        bucket_region = constraint or DEFAULT_REGION
        created = await run_in_threadpool(self.store.create_bucket, bucket, bucket_region)
        if not created:
            existing = await run_in_threadpool(self.store.bucket, bucket)
            if not (existing.region == DEFAULT_REGION and region == DEFAULT_REGION):
                raise S3Error("BucketAlreadyOwnedByYou", 409, "Your previous request to create the named bucket "
                              "succeeded and you already own it.", BucketName=bucket)
        return Response(status_code=200, headers={"Location": f"/{bucket}"})

    def head_bucket(self, bucket: str) -> Response:
        found = self.store.bucket(bucket)
        return Response(status_code=200, headers={"x-amz-bucket-region": found.region})

    def get_bucket_location(self, bucket: str) -> Response:
        found = self.store.bucket(bucket)
        root = xml_root("LocationConstraint")
        if found.region != DEFAULT_REGION:
            root.text = found.region
        return xml_response(root)

    # -- objects --------------------------------------------------------------------------------

    async def put_object(self, request: Request, bucket: str, key: str) -> Response:
        await run_in_threadpool(self.store.bucket, bucket)  # NoSuchBucket before reading the body
        if request.headers.get("if-none-match", "").strip() == "*":
            await run_in_threadpool(self._refuse_existing, bucket, key)
        meta = object_headers(request)
        meta.key = key
        temp, checksum = await receive_body(self.store, request)
        meta.checksum = checksum
        if request.headers.get("if-none-match", "").strip() == "*":
            await run_in_threadpool(self._refuse_existing, bucket, key, temp)
        stored = await run_in_threadpool(self.store.commit, bucket, temp, meta)
        headers = {"ETag": stored.etag}
        if checksum:
            headers[f"x-amz-checksum-{checksum['algorithm']}"] = checksum["value"]
        return Response(status_code=200, headers=headers)

    def _refuse_existing(self, bucket: str, key: str, temp: TempFile | None = None) -> None:
        try:
            self.store.head(bucket, key)
        except S3Error:
            return
        if temp is not None:
            temp.abort()
        raise S3Error("PreconditionFailed", 412, "At least one of the pre-conditions you specified did not hold",
                      Condition="If-None-Match")

    def get_object(self, request: Request, bucket: str, key: str, q: dict[str, str]) -> Response:
        head = request.method == "HEAD"
        meta, fh = self.store.open(bucket, key)
        try:
            match, none_match = request.headers.get("if-match"), request.headers.get("if-none-match")
            if match is not None and not etag_matches(match, meta.etag):
                raise S3Error("PreconditionFailed", 412, "At least one of the pre-conditions you specified did "
                              "not hold", Condition="If-Match")
            if none_match is not None and etag_matches(none_match, meta.etag):
                fh.close()
                return Response(status_code=304, headers={"ETag": meta.etag,
                                                          "Last-Modified": http_date(meta.last_modified)})
            headers = meta_headers(meta)
            for name, header in (("response-content-type", "Content-Type"),
                                 ("response-content-disposition", "Content-Disposition"),
                                 ("response-content-encoding", "Content-Encoding"),
                                 ("response-content-language", "Content-Language"),
                                 ("response-cache-control", "Cache-Control"), ("response-expires", "Expires")):
                if name in q:
                    headers[header] = q[name]
            rng = parse_range(request.headers.get("range"), meta.size)
            status, start, length = 200, 0, meta.size
            if rng is not None:
                status, start, length = 206, rng[0], rng[1] - rng[0] + 1
                headers["Content-Range"] = f"bytes {rng[0]}-{rng[1]}/{meta.size}"
            elif (request.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED"
                  and meta.checksum.get("value")):
                headers[f"x-amz-checksum-{meta.checksum['algorithm']}"] = meta.checksum["value"]
            headers["Content-Length"] = str(length)
            if head:
                fh.close()
                return Response(status_code=status, headers=headers)
            # the generator closes the file when it ends; the background task when it never ran
            return StreamingResponse(file_chunks(fh, start, length), status_code=status, headers=headers,
                                     background=BackgroundTask(fh.close))
        except BaseException:
            fh.close()
            raise

    async def copy_object(self, request: Request, bucket: str, key: str) -> Response:
        source = unquote(request.headers["x-amz-copy-source"].split("?", 1)[0]).lstrip("/")
        src_bucket, _, src_key = source.partition("/")
        if not src_bucket or not src_key:
            raise S3Error("InvalidArgument", 400, "Copy Source must mention the source bucket and key: "
                          "sourcebucket/sourcekey", ArgumentName="x-amz-copy-source")
        directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", 400, "Unknown metadata directive.",
                          ArgumentName="x-amz-metadata-directive", ArgumentValue=directive)
        replace: ObjectMeta | None = None
        if directive == "REPLACE":
            replace = object_headers(request)
        elif (src_bucket, src_key) == (bucket, key):
            raise S3Error("InvalidRequest", 400, "This copy request is illegal because it is trying to copy an "
                          "object to itself without changing the object's metadata, storage class, website "
                          "redirect location or encryption attributes.")
        await read_small(request)
        stored = await run_in_threadpool(self.store.copy, src_bucket, src_key, bucket, replace, key)
        root = xml_root("CopyObjectResult")
        el(root, "LastModified", iso(stored.last_modified))
        el(root, "ETag", stored.etag)
        return xml_response(root)

    async def delete_objects(self, request: Request, bucket: str) -> Response:
        await run_in_threadpool(self.store.bucket, bucket)
        quiet, keys = delete_request(await read_small(request))
        root = xml_root("DeleteResult")
        for key in keys:
            try:
                await run_in_threadpool(self.store.delete, bucket, key)
            except S3Error as exc:
                error = el(root, "Error")
                el(error, "Key", key)
                el(error, "Code", exc.code)
                el(error, "Message", exc.message)
                continue
            if not quiet:
                el(el(root, "Deleted"), "Key", key)
        return xml_response(root)


def _method_not_allowed(method: str) -> S3Error:
    return S3Error("MethodNotAllowed", 405, "The specified method is not allowed against this resource.",
                   Method=method, ResourceType="OBJECT")
