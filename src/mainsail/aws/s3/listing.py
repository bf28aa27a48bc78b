"""S3 object listing: ListObjects and ListObjectsV2 over an :class:`~mainsail.aws.s3.store.S3Store` (prefix,
delimiter roll-up into CommonPrefixes, markers and continuation tokens, ``encoding-type=url``)."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote

from starlette.responses import Response

from mainsail.aws.s3.files import ObjectMeta, S3Error
from mainsail.aws.s3.store import S3Store
from mainsail.aws.s3.wire import OWNER_ID, el, iso, xml_response, xml_root


def list_objects(store: S3Store, bucket: str, q: dict[str, str]) -> Response:
    v2 = q.get("list-type") == "2"
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    url = q.get("encoding-type") == "url"
    if "encoding-type" in q and not url:
        raise S3Error("InvalidArgument", 400, "Invalid Encoding Method specified in Request",
                      ArgumentName="encoding-type", ArgumentValue=q["encoding-type"])
    try:
        max_keys = int(q.get("max-keys", "1000"))
    except ValueError:
        raise S3Error("InvalidArgument", 400, "Provided max-keys not an integer or within integer range",
                      ArgumentName="max-keys", ArgumentValue=q.get("max-keys", "")) from None
    if max_keys < 0:
        raise S3Error("InvalidArgument", 400, "Argument maxKeys must be an integer between 0 and 2147483647",
                      ArgumentName="maxKeys", ArgumentValue=str(max_keys))
    max_keys = min(max_keys, 1000)
    marker = q.get("marker", "")
    token = q.get("continuation-token")
    if v2:
        marker = q.get("start-after", "")
        if token is not None:
            try:
                marker = base64.urlsafe_b64decode(token.encode()).decode("utf-8", "surrogatepass")
            except (ValueError, binascii.Error):
                raise S3Error("InvalidArgument", 400, "The continuation token provided is incorrect",
                              ArgumentName="continuation-token") from None
    objects = store.list_objects(bucket, prefix)
    contents: list[ObjectMeta] = []
    prefixes: list[str] = []
    truncated = False
    last = ""
    for meta in objects:
        entry, rolled = meta.key, None
        if delimiter:
            idx = meta.key.find(delimiter, len(prefix))
            if idx >= 0:
                rolled = meta.key[:idx + len(delimiter)]
                entry = rolled
        if marker and entry.encode("utf-8", "surrogatepass") <= marker.encode("utf-8", "surrogatepass"):
            continue
        if rolled is not None and prefixes and prefixes[-1] == rolled:
            continue
        if len(contents) + len(prefixes) >= max_keys:
            truncated = max_keys > 0  # as S3 (and moto) answer max-keys=0
            break
        if rolled is not None:
            prefixes.append(rolled)
        else:
            contents.append(meta)
        last = entry

    def enc(value: str) -> str:
        return quote(value, safe="/") if url else value

    root = xml_root("ListBucketResult")
    el(root, "Name", bucket)
    el(root, "Prefix", enc(prefix))
    if v2:
        if "start-after" in q:
            el(root, "StartAfter", enc(q["start-after"]))
        if token is not None:
            el(root, "ContinuationToken", token)
        if truncated:
            el(root, "NextContinuationToken",
                base64.urlsafe_b64encode(last.encode("utf-8", "surrogatepass")).decode())
        el(root, "KeyCount", len(contents) + len(prefixes))
    else:
        el(root, "Marker", enc(marker))
        if truncated and delimiter:
            el(root, "NextMarker", enc(last))
    el(root, "MaxKeys", max_keys)
    if delimiter:
        el(root, "Delimiter", enc(delimiter))
    if url:
        el(root, "EncodingType", "url")
    el(root, "IsTruncated", "true" if truncated else "false")
    for meta in contents:
        item = el(root, "Contents")
        el(item, "Key", enc(meta.key))
        el(item, "LastModified", iso(meta.last_modified))
        el(item, "ETag", meta.etag)
        el(item, "Size", meta.size)
        el(item, "StorageClass", "STANDARD")
        if not v2 or q.get("fetch-owner") == "true":
            owner = el(item, "Owner")
            el(owner, "ID", OWNER_ID)
            el(owner, "DisplayName", "mainsail")
    for rolled_up in prefixes:
        el(el(root, "CommonPrefixes"), "Prefix", enc(rolled_up))
    return xml_response(root)
