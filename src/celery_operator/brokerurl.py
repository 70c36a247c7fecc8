"""Parsing Celery broker URLs (pure): what the scalers and validators need to know.

Celery accepts many transports; the operator can count waiting tasks on three families:
Redis (`redis://`, `rediss://`), RabbitMQ (`amqp://`, `amqps://`, `pyamqp://`) and, through
KEDA only, Amazon SQS (`sqs://`). Credentials are kept apart so that nothing here prints
them: `redacted()` is what logs, events and status may show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

Family = Literal["redis", "amqp", "sqs", "other"]

_FAMILIES: dict[str, Family] = {
    "redis": "redis",
    "rediss": "redis",
    "amqp": "amqp",
    "amqps": "amqp",
    "pyamqp": "amqp",
    "librabbitmq": "amqp",
    "sqs": "sqs",
}
_DEFAULT_PORTS = {
    "redis": 6379,
    "rediss": 6379,
    "amqp": 5672,
    "pyamqp": 5672,
    "librabbitmq": 5672,
    "amqps": 5671,
}


def _netloc_host(host: str, port: int | None) -> str:
    """host[:port], with an IPv6 address in brackets."""
    h = f"[{host}]" if ":" in host else host
    return f"{h}:{port}" if port else h


# kombu's Redis transport keeps priorities 3, 6 and 9 in extra lists "<queue>\x06\x16<step>".
REDIS_PRIORITY_SEP = "\x06\x16"
REDIS_PRIORITY_STEPS = (0, 3, 6, 9)


class BrokerURLError(ValueError):
    """A URL the operator cannot use, with a message safe to show (no credentials)."""


@dataclass(frozen=True)
class BrokerURL:
    scheme: str
    family: Family
    host: str = ""
    port: int | None = None
    username: str = ""
    password: str = field(default="", repr=False)
    path: str = ""
    query: dict[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.scheme in ("rediss", "amqps") or self.query.get("ssl", "").lower() in (
            "1",
            "true",
        )

    @property
    def has_password(self) -> bool:
        return bool(self.password)

    @property
    def redis_db(self) -> int:
        """The Redis database number (the URL path, default 0)."""
        db = self.path.strip("/") or self.query.get("virtual_host", "") or "0"
        try:
            return int(db)
        except ValueError:
            raise BrokerURLError(f"Redis database must be a number, got {db!r}") from None

    @property
    def amqp_vhost(self) -> str:
        """The RabbitMQ virtual host as kombu reads it: '' and '/' both mean '/'."""
        vhost = unquote(self.path[1:]) if self.path.startswith("/") else ""
        return vhost or "/"

    def address(self) -> str:
        return _netloc_host(self.host, self.port)

    def redacted(self) -> str:
        """The URL with its password replaced: safe for logs, events and status."""
        user = quote(self.username, safe="") if self.username else ""
        cred = f"{user}:***@" if self.password else (f"{user}@" if user else "")
        return f"{self.scheme}://{cred}{_netloc_host(self.host, self.port)}{self.path}"

    def amqp_url(self) -> str:
        """An amqp(s):// URL with credentials, as RabbitMQ clients other than kombu expect
        (KEDA rejects kombu's pyamqp:// alias)."""
        scheme = "amqps" if self.tls else "amqp"
        cred = ""
        if self.username or self.password:
            cred = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
        vhost = quote(self.amqp_vhost, safe="")
        return f"{scheme}://{cred}{_netloc_host(self.host, self.port)}/{vhost}"


def parse_broker_url(url: str) -> BrokerURL:
    """Parses a Celery broker URL. A failover list ("url1;url2") yields its first URL."""
    url = url.strip().split(";")[0].strip()
    if "://" not in url:
        raise BrokerURLError("a broker URL looks like scheme://host:port/...; got no scheme")
    scheme = url.split("://", 1)[0].lower()
    family = _FAMILIES.get(scheme, "other")
    # A raw '/', '?' or '#' in a password ends the authority early: the rest of the
    # credentials would land in the port or the path. Refuse without quoting any of it.
    unencoded = BrokerURLError(
        f"cannot parse the {scheme}:// URL: its credentials must be URL-encoded "
        "(a '/', '?' or '#' in a password is written %2F, %3F, %23)"
    )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise unencoded from None
    if "@" not in parts.netloc and "@" in url.split("://", 1)[1]:
        raise unencoded
    return BrokerURL(
        scheme=scheme,
        family=family,
        host=parts.hostname or "",
        port=port or _DEFAULT_PORTS.get(scheme),
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        path=parts.path,
        query=dict(parse_qsl(parts.query)),
    )


# scheme://user:password@ anywhere in a text: the password is everything up to the last
# "@" before a blank (an unencoded "@" or "/" in a password is covered too).
_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*):\S*@")


def redact_text(text: str) -> str:
    """`text` with the password of every URL in it replaced by *** (what a library's error
    message may quote): for what the operator shows that it did not compose itself."""
    return _URL_CREDENTIALS.sub(r"\g<head>:***@", text)


def literal_url_has_password(url: str) -> bool:
    """True when a URL carries a password (which belongs in a Secret, not in a spec).
    A URL that cannot be parsed is reported as such by the validators, not here."""
    try:
        return parse_broker_url(url).has_password
    except BrokerURLError:
        return False


def redis_queue_keys(queue: str) -> list[str]:
    """Every Redis list holding waiting tasks of a Celery queue (base list + priority lists)."""
    return [
        queue if step == 0 else f"{queue}{REDIS_PRIORITY_SEP}{step}"
        for step in REDIS_PRIORITY_STEPS
    ]
