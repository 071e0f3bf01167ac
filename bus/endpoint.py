"""Where a Redis server is and how to reach it, from a URL; and the URL as
it may be logged.

``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs (see
:class:`RedisEndpoint`). :func:`mask_url` is the only form of a URL that
goes into a log line, an event or monitor output: the password never does.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from bus.errors import TransportError

__all__ = ["RedisEndpoint", "mask_url"]


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to log)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user, sep, _password = userinfo.partition(":")
            netloc = f"{user}:***@{hostinfo}" if sep else f"{user}@{hostinfo}"
        query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
        # Not urlunsplit: it turns "unix:///path" into "unix:/path".
        masked = f"{parts.scheme}://{netloc}{parts.path}"
        if query:
            masked += f"?{query}"
        if parts.fragment:
            masked += f"#{parts.fragment}"
        return masked
    except ValueError:
        # Unparseable: mask everything between "://" and "@" to be safe.
        return re.sub(r"//[^/@]*@", "//***@", url)


@dataclass(frozen=True)
class RedisEndpoint:
    """Where and how to connect, parsed from a URL.

    ``redis://[user[:password]@]host[:port][/db]``,
    ``rediss://...`` (TLS; query ``ssl_cert_reqs=none|optional|required``,
    ``ssl_ca_certs=PATH``, ``ssl_check_hostname=false``),
    ``unix:///path/to/sock[?db=N&password=...]``.
    """

    host: str | None = None
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ssl_cert_reqs: str = "required"
    ssl_ca_certs: str | None = None
    ssl_check_hostname: bool = True

    @classmethod
    def parse(cls, url: str) -> RedisEndpoint:
        try:
            parts = urlsplit(url)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password) if parts.password is not None else None
            password = query.get("password", password)
            username = query.get("username", username)
            if parts.scheme == "unix":
                if not parts.path:
                    raise ValueError("no socket path")
                return cls(
                    path=unquote(parts.path),
                    db=int(query.get("db", 0)),
                    username=username,
                    password=password,
                )
            if parts.scheme not in ("redis", "rediss"):
                raise ValueError(f"unsupported scheme {parts.scheme!r}")
            db_text = parts.path.lstrip("/") or query.get("db", "0")
            return cls(
                host=parts.hostname or "localhost",
                port=parts.port or 6379,
                db=int(db_text),
                username=username,
                password=password,
                tls=parts.scheme == "rediss",
                ssl_cert_reqs=query.get("ssl_cert_reqs", "required").lower(),
                ssl_ca_certs=query.get("ssl_ca_certs"),
                ssl_check_hostname=query.get("ssl_check_hostname", "true").lower()
                not in ("false", "0", "no"),
            )
        except ValueError as exc:
            raise TransportError(f"bad redis URL {mask_url(url)}: {exc}") from exc

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ssl_ca_certs)
        reqs = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
        if self.ssl_cert_reqs not in reqs:
            raise TransportError(f"bad ssl_cert_reqs {self.ssl_cert_reqs!r}")
        context.check_hostname = self.ssl_check_hostname and self.ssl_cert_reqs != "none"
        context.verify_mode = reqs[self.ssl_cert_reqs]
        return context
