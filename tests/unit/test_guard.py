"""The endpoint guard: https only, public addresses only, the allow-list."""

from __future__ import annotations

import httpx
import pytest

from worker.errors import Misconfigured
from worker.validators.guard import Allowed, EndpointGuard

STRICT = EndpointGuard(allow_insecure=False)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://93.184.216.34/v", "not https"),
        ("https://127.0.0.1/v", "non-public"),
        ("https://localhost:8443/v", "non-public"),
        ("https://10.1.2.3/v", "non-public"),
        ("https://169.254.169.254/latest/meta-data", "non-public"),
        ("https://[::1]/v", "non-public"),
        ("https://192.168.0.10/v", "non-public"),
    ],
)
async def test_refused_by_default(url: str, why: str) -> None:
    with pytest.raises(Misconfigured, match=why):
        await STRICT.check(httpx.URL(url))


async def test_public_https_passes_and_insecure_lifts_both_rules() -> None:
    await STRICT.check(httpx.URL("https://93.184.216.34/v"))
    await EndpointGuard(allow_insecure=True).check(httpx.URL("http://127.0.0.1:8080/v"))


async def test_allow_list_matches_scheme_host_and_port() -> None:
    guard = EndpointGuard(
        allow_insecure=True,
        allowlist=(
            Allowed.parse("https://auth.example.com"),
            Allowed.parse("https://*.corp.example:8443"),
        ),
    )
    await guard.check(httpx.URL("https://auth.example.com/VerifyToken?token=secret"))
    await guard.check(httpx.URL("https://idp.corp.example:8443/token"))
    for url in (
        "http://auth.example.com/v",
        "https://auth.example.com:444/v",
        "https://evil.example.com/v",
        "https://corp.example.evil.com:8443/v",
    ):
        with pytest.raises(Misconfigured, match="ALLOWLIST") as err:
            await guard.check(httpx.URL(url + "?token=secret"))
        assert "secret" not in str(err.value)


def test_bad_allow_list_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="scheme://host"):
        Allowed.parse("ftp://x")


@pytest.mark.parametrize(
    "url",
    [
        "https://[::ffff:127.0.0.1]/v",  # IPv4-mapped
        "https://[::127.0.0.1]/v",  # IPv4-compatible
        "https://[64:ff9b::a9fe:a9fe]/v",  # NAT64 of 169.254.169.254
        "https://[2002:7f00:1::]/v",  # 6to4 of 127.0.0.1
        "https://[2002:a00:1::]/v",  # 6to4 of 10.0.0.1
        "https://127.0.0.1./v",  # a trailing dot
        "https://localhost./v",
        "https://does-not-resolve.invalid/v",
    ],
)
async def test_embedded_ipv4_trailing_dots_and_unresolvable_names_are_refused(url: str) -> None:
    with pytest.raises(Misconfigured, match="non-public|does not resolve"):
        await STRICT.check(httpx.URL(url))


async def test_the_connection_resolves_to_checked_public_addresses_only() -> None:
    """DNS rebinding: a name checked as public, then re-resolved to a private address at
    connection time, finds nothing to connect to."""
    from worker.validators.guard import GuardedResolver

    resolver = GuardedResolver()
    try:
        with pytest.raises(OSError, match="no public address"):
            await resolver.resolve("localhost", 443)
        with pytest.raises(OSError, match="no public address"):
            await resolver.resolve("127.0.0.1", 443)
    finally:
        await resolver.close()
