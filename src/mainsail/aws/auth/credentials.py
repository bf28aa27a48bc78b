"""The access keys ``mainsail up --credentials FILE`` accepts, read from a file in the shape of
``~/.aws/credentials``.

Each section (profile) is one access key::

    [alice]
    aws_access_key_id = AKIAALICE0000000001
    aws_secret_access_key = alice-secret
    # mainsail's own keys (AWS tools ignore them):
    policy = policies/invoke-prod.json   # an IAM JSON policy; relative paths from this file
    user = alice                         # the IAM user name (default: the section's name)

A key without ``policy`` may do everything, as an account's root user can. The file is read once, at
start; a malformed file or policy stops the start with a message that names it.
"""

from __future__ import annotations

import configparser
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from mainsail.aws.auth.policy import Policy, PolicyError, load_policy
from mainsail.aws.identity import ACCOUNT
from mainsail.errors import MainsailError

_ACCESS_KEY_RE = re.compile(r"[A-Za-z0-9+/=._-]{3,128}")
_USER_RE = re.compile(r"[\w+=,.@-]{1,64}")


class CredentialsError(MainsailError):
    """The credentials file (or a policy it names) cannot be used."""


@dataclass(frozen=True)
class AccessKey:
    """One configured key: its secret, the IAM user it belongs to and the policy attached to it."""

    access_key_id: str
    secret_access_key: str
    user: str
    policy: Policy | None = None
    session_token: str | None = None

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{ACCOUNT}:user/{self.user}"

    @property
    def user_id(self) -> str:
        """A stable IAM unique id (``AIDA`` + 17 characters), derived from the user name."""
        digest = hashlib.sha256(self.user.encode()).hexdigest().upper()
        return "AIDA" + "".join(c if c.isalpha() else chr(ord("A") + int(c)) for c in digest[:17])


@dataclass(frozen=True)
class KeyRing:
    """The keys ``mainsail up`` accepts, by access key id."""

    keys: dict[str, AccessKey]
    source: str = ""
    #: the same keys by the file's section (profile) names
    profiles: dict[str, AccessKey] = field(default_factory=dict)

    def get(self, access_key_id: str) -> AccessKey | None:
        return self.keys.get(access_key_id)

    def profile(self, name: str) -> AccessKey:
        """The key of the section (profile) ``name``; CredentialsError naming the others if none."""
        key = self.profiles.get(name)
        if key is None:
            raise CredentialsError(f"The credentials file {self.source} has no [{name}] section "
                                   f"(it has: {', '.join(self.profiles) or 'none'})")
        return key


def load_credentials(path: str | Path) -> KeyRing:
    """Read a credentials file; every section must name a key id and its secret."""
    file = Path(path).expanduser()
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    try:
        with file.open(encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise CredentialsError(f"Cannot read the credentials file {file}: {exc.strerror or exc}") from None
    except configparser.Error as exc:
        raise CredentialsError(f"The credentials file {file} is malformed: {exc.message}") from None
    keys: dict[str, AccessKey] = {}
    profiles: dict[str, AccessKey] = {}
    for section in parser.sections():
        entry = parser[section]
        key_id = (entry.get("aws_access_key_id") or "").strip()
        secret = (entry.get("aws_secret_access_key") or "").strip()
        where = f"{file} [{section}]"
        if not key_id or not secret:
            raise CredentialsError(f"{where}: aws_access_key_id and aws_secret_access_key are both required")
        if not _ACCESS_KEY_RE.fullmatch(key_id):
            raise CredentialsError(f"{where}: aws_access_key_id {key_id!r} is not a valid access key id")
        if key_id in keys:
            raise CredentialsError(f"{where}: the access key id {key_id} is already used by another section")
        user = (entry.get("user") or section).strip()
        if not _USER_RE.fullmatch(user):
            raise CredentialsError(f"{where}: {user!r} is not a valid IAM user name (use the user = key)")
        policy = None
        if entry.get("policy"):
            policy_path = Path(entry["policy"].strip()).expanduser()
            if not policy_path.is_absolute():
                policy_path = file.parent / policy_path
            try:
                policy = load_policy(policy_path)
            except PolicyError as exc:
                raise CredentialsError(f"{where}: {exc.message}") from None
        token = (entry.get("aws_session_token") or "").strip() or None
        keys[key_id] = profiles[section] = AccessKey(key_id, secret, user, policy, token)
    if not keys:
        raise CredentialsError(f"The credentials file {file} holds no access key")
    return KeyRing(keys, str(file), profiles)
