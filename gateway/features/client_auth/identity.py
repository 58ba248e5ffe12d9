"""Client auth: who is calling (401, ``Authenticator``) and whether they may call this (403,
``VendorAccess``), asked for every request whenever ``[clients]`` is configured: by ``Runtime.resolve``
before routing (an unknown caller learns no vendor or route names), by ``Runtime.admit`` before any
stage.

A caller presents its gateway key as ``Authorization: Bearer KEY`` or ``X-Gateway-Key: KEY`` (the
latter wins when both are sent), or, with ``[gateway] tls.client_ca_file``, is known by the subject of
the certificate it presented (``cert_subject``): a request that carries a key is identified by the key,
one without a key by its certificate. The key is compared with every client's key in constant time (SHA-256
digests, ``hmac.compare_digest``, no early exit), so neither timing nor the answer reveals which
client or how much of a key matched; a key found valid is remembered (per process, until the next
reload), so its later requests cost a dict lookup. The key never reaches the vendor:
``X-Gateway-Key`` is dropped for every request (``upstream.REQUEST_DROP``) and so is an ``Authorization``
header that carried the key (``upstream.request_headers``); a vendor with ``auth`` configured gets its
own credentials in its place.

``allow`` rules are ``AllowRule``s from the config: a whole vendor, or a method and path glob matched
with ``Route.matches`` (the same ``*``/``**`` semantics as routes files; a GET rule also admits HEAD).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from aiohttp import hdrs
from multidict import CIMultiDictProxy, istr

from ...config import Client, Route, Vendor
from ...config.model import SUBJECT_ATTRIBUTES
from ...errors import Forbidden, Unauthorized

GATEWAY_KEY_HEADER = istr("X-Gateway-Key")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="gateway"'}
_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
_SHORT = {long: short for short, long in SUBJECT_ATTRIBUTES.items()}


class Authenticator:
    """Maps a presented gateway key, or a client certificate's subject, to a client name."""

    def __init__(self, clients: Mapping[str, Client]) -> None:
        self._digests = [(_digest(c.key.reveal()), name) for name, c in clients.items() if c.key is not None]
        self._subjects = [(c.cert_subject, name) for name, c in clients.items() if c.cert_subject is not None]
        # Keys seen to be valid -> their client: a known caller costs a dict lookup, not a digest per
        # request. Only keys that matched go in (at most one entry per client key), so unknown keys
        # cannot grow it; a lookup compares randomly seeded hashes first, so it tells nothing about how
        # much of a key matched, only whether it is valid, which the answer says anyway.
        self._known: dict[str, str] = {}
        # The same for whole Authorization values ("Bearer KEY" as sent): a known caller's usual request
        # costs two field lookups and this one, without taking the value apart.
        self._known_authorization: dict[str, str] = {}

    def identify(
        self, headers: CIMultiDictProxy[str], client_cert: frozenset[tuple[str, str]] | None = None
    ) -> tuple[str, bool]:
        """(client name, whether the key came in Authorization); raises ``Unauthorized``.
        ``client_cert``: the subject of the certificate the caller's connection presented."""
        if GATEWAY_KEY_HEADER not in headers and (authorization := headers.get(hdrs.AUTHORIZATION)):
            found = self._known_authorization.get(authorization)
            if found is not None:
                return found, True
        presented, via_authorization = presented_key(headers)
        if not presented and client_cert is not None and self._subjects:
            return self._by_certificate(client_cert), False
        if not presented:
            raise Unauthorized(
                "send your gateway key as 'Authorization: Bearer KEY' or 'X-Gateway-Key: KEY'",
                headers=_CHALLENGE,
            )
        found = self._known.get(presented)
        if found is None:
            found = self.known(presented)
            if found is None:
                raise Unauthorized("the gateway key is not known", headers=_INVALID_TOKEN)
            if len(self._known) < len(self._digests):
                self._known[presented] = found
        if via_authorization and len(self._known_authorization) < len(self._digests):
            self._known_authorization[headers[hdrs.AUTHORIZATION]] = found
        return found, via_authorization

    def known(self, presented: str) -> str | None:
        """The client whose key this is (every key compared, in constant time), or None."""
        digest = _digest(presented)
        found: str | None = None
        for known, name in self._digests:
            if hmac.compare_digest(known, digest):
                found = name
        return found

    def _by_certificate(self, client_cert: frozenset[tuple[str, str]]) -> str:
        names = [name for subject, name in self._subjects if subject.matches(client_cert)]
        if len(names) == 1:
            return names[0]
        shown = ",".join(
            f"{_SHORT.get(attribute, attribute)}={value}" for attribute, value in sorted(client_cert)
        )
        raise Unauthorized(
            f"the client certificate's subject ({shown}) is "
            + (f"that of several clients: {', '.join(names)}" if names else "no client's cert_subject")
            + "; send a gateway key, or use a certificate made for one client",
            headers=_CHALLENGE,
        )


class VendorAccess:
    """What each client may call on one vendor (its ``allow`` rules), checked by ``Runtime.admit`` once
    the caller is identified and its route found: a 403 before any stage runs."""

    def __init__(self, clients: Mapping[str, Client], vendor: Vendor) -> None:
        self.vendor = vendor.name
        # client -> its rules for this vendor; None in the tuple means the whole vendor.
        self.rules: dict[str, tuple[Route | None, ...]] = {
            name: tuple(rule.route for rule in client.allow if rule.vendor == vendor.name)
            for name, client in clients.items()
        }
        # Clients allowed the whole vendor: no rule to match.
        self.whole_vendor = frozenset(
            name for name, rules in self.rules.items() if any(rule is None for rule in rules)
        )

    def check(self, client: str, method: str, path: str, segments: tuple[str, ...]) -> None:
        """Raises ``Forbidden`` unless ``client`` may call ``method`` on the vendor path."""
        if client in self.whole_vendor or any(
            rule is not None and rule.matches(method, segments) for rule in self.rules.get(client, ())
        ):
            return
        raise Forbidden(f"client {client!r} may not call {method} {path or '/'} on vendor {self.vendor!r}")


def presented_key(headers: CIMultiDictProxy[str]) -> tuple[str | None, bool]:
    """(the key the caller sent, whether it came in Authorization): ``X-Gateway-Key`` first."""
    presented = headers.get(GATEWAY_KEY_HEADER)
    if presented is not None:
        return presented or None, False
    scheme, _, credentials = headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() == "bearer" and (credentials := credentials.strip()):
        return credentials, True
    return None, False


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()
