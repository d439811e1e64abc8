"""What a credential looks like, and how to mask one: the one home of both rules.

params.yaml ends up in dvc.lock, in MLflow and in git, so no value in it may be a credential
(:func:`credential_shape`, used by :mod:`moalign.config`); a URL the user rightly gives with a
password (a tracking server's database) is shown masked (:func:`redact_url_password`). Standard
library only, so that the config, the judge and tracking can all import it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit


#: a param key or a URL query parameter whose name holds one of these words carries a credential
#: (case-insensitive)
SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "credential")

# Providers' key formats: a known prefix, then a random part (a run of 16+ letters and digits).
_KEY_PREFIX = re.compile(r"sk-|hf_|gh[pousr]_|github_pat_|glpat-|xox[abposr]-|AIza")
_RANDOM_RUN = re.compile(r"[A-Za-z0-9]{16,}")
_AWS_KEY_ID = re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")
_KEY_CHARS = re.compile(r"[A-Za-z0-9_-]+")
# A whole value that is one opaque token: 32+ key characters with a 20+ run mixing letters and
# digits. Words joined by _ or - (a long dimension or experiment name) have no such run, and paths
# (a sha in a snapshot folder) have slashes or dots, so neither is taken for a key.
_OPAQUE = re.compile(r"[A-Za-z0-9_-]{32,}")
_MIXED_RUN = re.compile(r"(?=[A-Za-z0-9]*[0-9])(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{20,}")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")


def credential_shape(value: str) -> str | None:
    """What in ``value`` looks like a credential (said without quoting it), or None.

    A provider's API key anywhere in it (``sk-``, ``sk-ant-``, ``hf_``, ``ghp_``, ``AKIA``, ``xoxb-``...
    then a random part), a JSON web token, a URL carrying a password (``scheme://user:pass@``), a token
    as its user or a credential query parameter (``?api_key=``, ``token=``), or the whole value one
    opaque token of 32+ characters.
    """
    for token in _KEY_CHARS.findall(value):
        prefix = _KEY_PREFIX.match(token)
        if prefix and _RANDOM_RUN.search(token, prefix.end()):
            return f"an API key (it starts with {prefix.group()})"
    if _AWS_KEY_ID.search(value):
        return "an AWS access key id"
    if _JWT.search(value):
        return "a JSON web token"
    for url in _URL.findall(value):
        try:
            parts = urlsplit(url)
        except ValueError:  # not a URL after all (an unclosed IPv6 bracket)
            continue
        if parts.password is not None:
            return "a URL with credentials in it (scheme://user:password@host)"
        if parts.username and credential_shape(parts.username):  # https://<token>@host
            return "a URL with a token as its user (scheme://token@host)"
        for name, _ in parse_qsl(parts.query, keep_blank_values=True):
            if any(word in name.lower() for word in SECRET_WORDS):
                return f"a URL with a credential in its query ({name}=...)"
    if _OPAQUE.fullmatch(value) and _MIXED_RUN.search(value):
        return "an access token (one opaque string of 32+ characters)"
    return None


_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^\s:/@]*):[^\s@/]*@")
_URL_SECRET_QUERY = re.compile(
    rf"(?P<head>[?&][^\s=&#]*(?:{'|'.join(SECRET_WORDS)})[^\s=&#]*=)[^\s&#]*", re.IGNORECASE
)


def redact_url_password(value: str) -> str:
    """``value`` with the credentials of any URL in it masked: a tracking server or judge endpoint may
    be given as ``postgresql://user:secret@host/db`` or ``https://host/v1?api_key=...``, and the key
    names no credential."""
    value = _URL_PASSWORD.sub(r"\g<head>:***@", value)
    return _URL_SECRET_QUERY.sub(r"\g<head>***", value)
