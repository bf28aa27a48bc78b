"""AWS Signature Version 4, checked on the server: the ``Authorization`` header or a presigned URL's
query, the date's skew, the key, and the signature itself, recomputed with botocore's own signer
(``botocore.auth.SigV4Auth``: the canonical request, string to sign and signing key the SDKs use), and
the per-chunk signatures of an ``aws-chunked`` upload (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``).

A failure is an :class:`AuthFailure` with a ``kind``; each service words it its own way
(``mainsail.gateway.auth``).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

from mainsail.aws.auth.credentials import AccessKey, KeyRing

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
AMZ_DATE = "%Y%m%dT%H%M%SZ"
#: the most a request's date may differ from the server's clock (S3 allows 15 minutes)
MAX_SKEW = dt.timedelta(minutes=5)
MAX_SKEW_S3 = dt.timedelta(minutes=15)
MAX_PRESIGN_EXPIRES = 604800

_AUTH_RE = re.compile(r"AWS4-HMAC-SHA256\s+(.*)", re.DOTALL)
_SCOPE_RE = re.compile(r"([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


class AuthFailure(Exception):
    """Why a request is not authenticated. ``kind``: ``missing`` (no signature), ``incomplete``
    (a malformed one), ``unsupported`` (not SigV4), ``unknown_key``, ``token`` (a session token the key
    does not have), ``signature`` (does not match), ``skewed`` (date too far from now), ``expired`` (a
    presigned URL past its expiry), ``scope`` (signed for another service), ``payload`` (the body does
    not match the signed hash)."""

    def __init__(self, kind: str, detail: str = "", **fields: str) -> None:
        super().__init__(detail or kind)
        self.kind = kind
        self.detail = detail
        self.fields = fields


@dataclass(frozen=True)
class Signed:
    """A request's signature as sent: header (``presigned`` false) or query."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    timestamp: str
    presigned: bool
    expires: int | None = None
    token: str | None = None
    version: int = 4
    """4, or 2 for S3's legacy presigned URLs (``AWSAccessKeyId``, ``Expires``, ``Signature``): boto3's
    ``generate_presigned_url`` still makes those unless the client asks for ``s3v4``."""

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True)
class Verified:
    """An authenticated request: the key that signed it and the signature it carried."""

    key: AccessKey
    signed: Signed

    @property
    def signing_key(self) -> bytes:
        """SigV4's derived key, which a chunked body's signatures are checked with (derived only then)."""
        return signing_key(self.key.secret_access_key, self.signed)


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise AuthFailure("incomplete", f"Authorization header requires each component to be of the form "
                              f"key=value: {part.strip()[:60]!r}. Authorization={text[:200]}")
        out[name.strip()] = value.strip()
    return out


def _timestamp(headers: dict[str, str]) -> str:
    if "x-amz-date" in headers:
        value = headers["x-amz-date"].strip()
        try:
            dt.datetime.strptime(value, AMZ_DATE)
        except ValueError:
            raise AuthFailure("incomplete", f"X-Amz-Date must be in the ISO8601 Long Format: {value!r}") from None
        return value
    if "date" in headers:
        try:
            when = parsedate_to_datetime(headers["date"]).astimezone(dt.UTC)
            if when.year >= 1000:  # strftime writes an earlier year with fewer digits
                return when.strftime(AMZ_DATE)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a year or time out of range
            pass
    raise AuthFailure("incomplete", "Authorization header requires existence of either a 'X-Amz-Date' or a "
                      "'Date' header.")


def parse(headers: dict[str, str], query_string: str) -> Signed:
    """The signature of a request (``headers``: lower-case names, repeated values joined by commas)."""
    auth = headers.get("authorization")
    if auth is not None:
        match = _AUTH_RE.fullmatch(auth.strip())
        if not match:
            if auth.startswith("AWS "):
                raise AuthFailure("unsupported", "The authorization mechanism you have provided is not "
                                  "supported. Please use AWS4-HMAC-SHA256.")
            raise AuthFailure("incomplete", f"Authorization header is not a SigV4 signature: {auth[:60]!r}")
        values = _fields(match.group(1))
        missing = [n for n in ("Credential", "SignedHeaders", "Signature") if not values.get(n)]
        if missing:
            raise AuthFailure("incomplete", "Authorization header requires " + ", ".join(
                f"'{n}' parameter" for n in missing) + f". Authorization={auth[:200]}")
        scope = _SCOPE_RE.fullmatch(values["Credential"])
        if not scope:
            raise AuthFailure("incomplete", f"Credential should be scoped to a valid region, service and "
                              f"date: {values['Credential'][:200]!r}")
        return Signed(scope.group(1), scope.group(2), scope.group(3), scope.group(4),
                      tuple(values["SignedHeaders"].lower().split(";")), values["Signature"], _timestamp(headers),
                      presigned=False, token=headers.get("x-amz-security-token"))
    query = dict(parse_qsl(query_string, keep_blank_values=True))
    if "X-Amz-Algorithm" not in query and "X-Amz-Signature" not in query:
        if "AWSAccessKeyId" in query and "Signature" in query:
            try:
                expires = int(query.get("Expires", ""))
            except ValueError:
                raise AuthFailure("incomplete", "Query-string authentication requires the Signature, Expires "
                                  "and AWSAccessKeyId parameters") from None
            return Signed(query["AWSAccessKeyId"], "", "", "s3", (), query["Signature"], "", presigned=True,
                          expires=expires, token=query.get("x-amz-security-token"), version=2)
        raise AuthFailure("missing", "Request is missing Authentication Token")
    if query.get("X-Amz-Algorithm") != ALGORITHM:
        raise AuthFailure("unsupported", "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
    missing = [n for n in ("X-Amz-Credential", "X-Amz-Signature", "X-Amz-SignedHeaders", "X-Amz-Date")
               if not query.get(n)]
    if missing:
        raise AuthFailure("incomplete", "Query-string authentication requires the " + ", ".join(missing)
                          + " parameters")
    scope = _SCOPE_RE.fullmatch(query["X-Amz-Credential"])
    if not scope:
        raise AuthFailure("incomplete", f"Error parsing the X-Amz-Credential parameter: "
                          f"{query['X-Amz-Credential'][:200]!r}")
    timestamp = query["X-Amz-Date"]
    try:
        dt.datetime.strptime(timestamp, AMZ_DATE)
        expires = int(query.get("X-Amz-Expires", "") or MAX_PRESIGN_EXPIRES)
    except ValueError:
        raise AuthFailure("incomplete", "X-Amz-Date must be in the ISO8601 Long Format and X-Amz-Expires a "
                          "number of seconds") from None
    if not 0 < expires <= MAX_PRESIGN_EXPIRES:
        raise AuthFailure("incomplete", "X-Amz-Expires must be less than a week (in seconds) that is 604800")
    return Signed(scope.group(1), scope.group(2), scope.group(3), scope.group(4),
                  tuple(query["X-Amz-SignedHeaders"].lower().split(";")), query["X-Amz-Signature"], timestamp,
                  presigned=True, expires=expires, token=query.get("X-Amz-Security-Token"))


def _check_time(signed: Signed, now: dt.datetime) -> None:
    when = dt.datetime.strptime(signed.timestamp, AMZ_DATE).replace(tzinfo=dt.UTC)
    stamp = now.strftime(AMZ_DATE)
    if signed.presigned:
        if now > when + dt.timedelta(seconds=signed.expires or 0):
            raise AuthFailure("expired", "Request has expired", **{
                "X-Amz-Expires": str(signed.expires), "Expires": (when + dt.timedelta(
                    seconds=signed.expires or 0)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ServerTime": now.strftime("%Y-%m-%dT%H:%M:%SZ")})
        if when - now > MAX_SKEW_S3:
            raise AuthFailure("skewed", "Request is not yet valid")
        return
    skew = MAX_SKEW_S3 if signed.service == "s3" else MAX_SKEW
    minutes = int(skew.total_seconds() // 60)
    fields = {"RequestTime": signed.timestamp, "ServerTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
              "MaxAllowedSkewMilliseconds": str(int(skew.total_seconds() * 1000))}
    if now - when > skew:
        raise AuthFailure("skewed", f"Signature expired: {signed.timestamp} is now earlier than "
                          f"{(now - skew).strftime(AMZ_DATE)} ({stamp} - {minutes} min.)", **fields)
    if when - now > skew:
        raise AuthFailure("skewed", f"Signature not yet current: {signed.timestamp} is still later than "
                          f"{(now + skew).strftime(AMZ_DATE)} ({stamp} + {minutes} min.)", **fields)


def signing_key(secret: str, signed: Signed) -> bytes:
    """SigV4's derived key for the request's date, region and service."""
    key = ("AWS4" + secret).encode()
    for part in (signed.date, signed.region, signed.service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def canonical_query(query_string: str, *, presigned: bool) -> str:
    """The raw query as sent, less a presigned URL's own ``X-Amz-Signature``."""
    if not presigned:
        return query_string
    return "&".join(p for p in query_string.split("&") if p.partition("=")[0] != "X-Amz-Signature")


def verify(signed: Signed, keys: KeyRing, *, method: str, raw_path: str, query_string: str,
           headers: list[tuple[str, str]], payload_hash: str, now: dt.datetime | None = None) -> Verified:
    """Check ``signed`` against the configured keys; ``headers`` as sent (lower-case names, in order),
    ``payload_hash`` what the canonical request ends with (the body's SHA-256, or what S3's
    ``x-amz-content-sha256`` declares)."""
    key = keys.get(signed.access_key_id)
    if key is None:
        raise AuthFailure("unknown_key", "The security token included in the request is invalid.",
                          AWSAccessKeyId=signed.access_key_id)
    if signed.token != key.session_token:
        raise AuthFailure("token", "The security token included in the request is invalid.")
    if signed.version == 2:
        return _verify_v2(signed, key, method, raw_path, query_string, headers, now or dt.datetime.now(dt.UTC))
    if signed.timestamp[:8] != signed.date:
        raise AuthFailure("signature", f"Date in Credential scope does not match YYYYMMDD from ISO-8601 "
                          f"version of date from HTTP: '{signed.date}' != '{signed.timestamp[:8]}', from "
                          f"ISO-8601 string: '{signed.timestamp}'.")
    _check_time(signed, now or dt.datetime.now(dt.UTC))
    if "host" not in signed.signed_headers:
        raise AuthFailure("signature", "'Host' must be a 'SignedHeader' in the AWS Authorization.")
    wanted = set(signed.signed_headers)
    chosen = [(name, value) for name, value in headers if name in wanted]
    query = canonical_query(query_string, presigned=signed.presigned)
    url = f"http://{headers_host(headers)}{raw_path or '/'}" + (f"?{query}" if query else "")
    auth, request = _botocore_signer(key, signed, chosen, payload_hash, method, url)
    try:
        canonical = auth.canonical_request(request)
    except ValueError as exc:  # urlsplit refuses the URL: a Host such as "[" (not an IPv6 address)
        raise AuthFailure("signature", f"The request signature we calculated does not match the signature you "
                          f"provided: the request's Host and path do not form a URL ({exc}).") from None
    string_to_sign = auth.string_to_sign(request, canonical)
    expected = auth.signature(string_to_sign, request)
    if not _same(expected, signed.signature):
        raise AuthFailure("signature", "The request signature we calculated does not match the signature you "
                          "provided. Check your AWS Secret Access Key and signing method. Consult the service "
                          "documentation for details.", AWSAccessKeyId=signed.access_key_id,
                          StringToSign=string_to_sign, SignatureProvided=signed.signature,
                          CanonicalRequest=canonical)
    return Verified(key, signed)


@functools.cache
def _canonical_class() -> type:
    """botocore's signer, choosing exactly the headers the request signed and the payload hash given."""
    # here: botocore is imported only by a control plane that checks signatures
    from botocore.auth import SigV4Auth
    from botocore.compat import HTTPHeaders

    class Canonical(SigV4Auth):  # type: ignore[misc]
        def __init__(self, credentials: Any, service: str, region: str, headers: list[tuple[str, str]],
                     payload_hash: str) -> None:
            super().__init__(credentials, service, region)
            self.chosen = HTTPHeaders()
            for name, value in headers:
                self.chosen[name] = value  # an email.Message: a repeated header is kept, in order
            self.payload_hash = payload_hash

        def headers_to_sign(self, request: Any) -> Any:
            return self.chosen

        def payload(self, request: Any) -> str:
            return self.payload_hash

        def _normalize_url_path(self, path: str) -> str:
            # S3 signs the path as sent; every other service normalizes and encodes it once more
            return path if self._service_name == "s3" else str(super()._normalize_url_path(path))

    return Canonical


def _botocore_signer(key: AccessKey, signed: Signed, headers: list[tuple[str, str]], payload_hash: str,
                     method: str, url: str) -> tuple[Any, Any]:
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=url)
    request.context["timestamp"] = signed.timestamp
    auth = _canonical_class()(Credentials(key.access_key_id, key.secret_access_key), signed.service,
                              signed.region, headers, payload_hash)
    return auth, request


def _verify_v2(signed: Signed, key: AccessKey, method: str, raw_path: str, query_string: str,
               headers: list[tuple[str, str]], now: dt.datetime) -> Verified:
    """An S3 SigV2 presigned URL, checked with botocore's ``HmacV1QueryAuth`` (the string it signs:
    method, Content-MD5, Content-Type, Expires, ``x-amz-*`` headers, the resource)."""
    # here: botocore is imported only by a control plane that checks signatures
    from botocore.auth import HmacV1QueryAuth
    from botocore.compat import HTTPHeaders, urlsplit
    from botocore.credentials import Credentials

    expires = signed.expires or 0
    if now.timestamp() > expires:
        raise AuthFailure("expired", "Request has expired", Expires=dt.datetime.fromtimestamp(expires, dt.UTC)
                          .strftime("%Y-%m-%dT%H:%M:%SZ"), ServerTime=now.strftime("%Y-%m-%dT%H:%M:%SZ"))

    class Query(HmacV1QueryAuth):  # type: ignore[misc]
        def _get_date(self) -> str:
            return str(expires)

    chosen = HTTPHeaders()
    for name, value in headers:
        if name in ("content-md5", "content-type") or name.startswith("x-amz-"):
            chosen[name] = value
    auth = Query(Credentials(key.access_key_id, key.secret_access_key), expires)
    try:
        split = urlsplit(f"http://{headers_host(headers)}{raw_path or '/'}"
                         + (f"?{query_string}" if query_string else ""))
    except ValueError as exc:
        raise AuthFailure("signature", f"The request signature we calculated does not match the signature you "
                          f"provided: the request's Host and path do not form a URL ({exc}).") from None
    expected = auth.get_signature(method, split, chosen)
    if not _same(expected, signed.signature):
        raise AuthFailure("signature", "The request signature we calculated does not match the signature you "
                          "provided. Check your key and signing method.", AWSAccessKeyId=signed.access_key_id,
                          SignatureProvided=signed.signature)
    return Verified(key, signed)


def _same(expected: str, given: str) -> bool:
    """A constant-time comparison of signatures, ``given`` as sent (any characters: compare_digest refuses
    non-ASCII ``str``, so both are compared as UTF-8)."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


def headers_host(headers: list[tuple[str, str]]) -> str:
    return next((value for name, value in headers if name == "host"), "localhost")


def is_sha256_hex(value: str) -> bool:
    return bool(_HEX64_RE.fullmatch(value))


class ChunkSignatures:
    """Checks an ``aws-chunked`` body's chain of chunk signatures, each over the previous one and the
    chunk's data (AWS's "Signature Calculations for the Authorization Header: Transferring Payload in
    Multiple Chunks"), and a trailer's signature when one is sent."""

    def __init__(self, verified: Verified) -> None:
        self.key = verified.signing_key
        self.timestamp = verified.signed.timestamp
        self.scope = verified.signed.scope
        self.previous = verified.signed.signature

    def _sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def chunk(self, signature: str | None, data_sha256: str) -> None:
        expected = self._sign("\n".join(("AWS4-HMAC-SHA256-PAYLOAD", self.timestamp, self.scope, self.previous,
                                         EMPTY_SHA256, data_sha256)))
        if signature is None or not _same(expected, signature):
            raise AuthFailure("signature", "The request signature we calculated does not match the signature "
                              "you provided.")
        self.previous = expected

    def trailer(self, signature: str | None, trailer_text: str) -> None:
        expected = self._sign("\n".join(("AWS4-HMAC-SHA256-TRAILER", self.timestamp, self.scope, self.previous,
                                         hashlib.sha256(trailer_text.encode()).hexdigest())))
        if signature is None or not _same(expected, signature):
            raise AuthFailure("signature", "The trailer signature we calculated does not match the signature "
                              "you provided.")
