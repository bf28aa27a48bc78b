"""STS ``GetCallerIdentity`` (AWS query protocol) on the control plane's port.

Scripts call ``boto3.client("sts").get_caller_identity()["Account"]`` to build ARNs and bucket names;
with ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_STS``) pointing here they get mainsail's fixed local
account. Other STS actions answer the query protocol's ``InvalidAction`` error.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.responses import Response

from mainsail.aws.auth.credentials import AccessKey
from mainsail.aws.identity import ACCOUNT
from mainsail.aws.xmltext import xml_escape

NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
USER_ID = "AIDAMAINSAILLOCALUSER"


def is_query_call(content_type: str | None) -> bool:
    """Whether a ``POST /`` is an AWS query-protocol call (form-encoded, no X-Amz-Target)."""
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded"


def handle(body: bytes, request_id: str, caller: AccessKey | None = None) -> Response:
    """An STS call; ``GetCallerIdentity`` answers the signing key's user (``caller``), or mainsail's
    one local user when signatures are not checked."""
    params = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    action = params.get("Action", "")
    if action == "GetCallerIdentity":
        arn = caller.arn if caller else f"arn:aws:iam::{ACCOUNT}:user/mainsail"
        user_id = caller.user_id if caller else USER_ID
        xml = (f'<GetCallerIdentityResponse xmlns="{NAMESPACE}"><GetCallerIdentityResult>'
               f"<Arn>{xml_escape(arn)}</Arn><UserId>{xml_escape(user_id)}</UserId>"
               f"<Account>{ACCOUNT}</Account></GetCallerIdentityResult>"
               f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
               "</GetCallerIdentityResponse>")
        return Response(xml, media_type="text/xml", headers={"x-amzn-RequestId": request_id})
    message = f"Could not find operation {action} for version {params.get('Version', '')}" if action \
        else "Missing Action parameter"
    xml = (f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>Sender</Type><Code>InvalidAction</Code>'
           f"<Message>{xml_escape(message)}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>")
    return Response(xml, status_code=400, media_type="text/xml", headers={"x-amzn-RequestId": request_id})
