"""Addresses a person can open: the URL of a TensorBoard bound to every interface, and the
SSH tunnel that reaches one on a remote machine.

``http://0.0.0.0:6006`` opens nowhere. For a wildcard host the URL names this machine as
others reach it: the address an SSH session came in on, else the host name (when it
resolves to one of this machine's own addresses), else the first address of an interface
that is up; ``127.0.0.1`` stays beside it for a browser on this machine.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import socket
from collections.abc import Mapping

import psutil

WILDCARDS = {"0.0.0.0", "::", "", "*"}


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in WILDCARDS


def format_url(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def loopback_for(host: str) -> str:
    """Where to knock to reach a TensorBoard bound to ``host`` from this machine."""
    host = host.strip("[]")
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def url_for(host: str, port: int, env: Mapping[str, str] | None = None) -> str:
    """The URL to print for a TensorBoard bound to ``host``: openable, never a wildcard."""
    return format_url(reachable_host(env) if is_wildcard(host) else host, port)


def local_url_for(host: str, port: int) -> str | None:
    """For a wildcard host, the URL for a browser on this machine; None otherwise."""
    return format_url(loopback_for(host), port) if is_wildcard(host) else None


def reachable_host(env: Mapping[str, str] | None = None) -> str:
    """This machine's address as others reach it (see the module docstring)."""
    env = os.environ if env is None else env
    if server := _ssh_server_address(env):
        return server
    own = _own_addresses()
    name = socket.gethostname()
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)}
    except OSError:
        resolved = set()
    if resolved & set(own):
        return name
    return own[0] if own else "127.0.0.1"


def tunnel_hint(host: str, port: int, env: Mapping[str, str] | None = None) -> str | None:
    """In an SSH session, the command that forwards a TensorBoard on ``host:port`` to the
    user's own machine, where it then opens as ``http://127.0.0.1:PORT``."""
    env = os.environ if env is None else env
    server = _ssh_server_address(env)
    if not server:
        return None
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = env.get("USER", "")
    target = f"{user}@{server}" if user else server
    if ":" in server:
        target = f"{user}@[{server}]" if user else f"[{server}]"
    there = loopback_for(host)
    there = f"[{there}]" if ":" in there else there
    return f"ssh -N -L {port}:{there}:{port} {target}"


def _ssh_server_address(env: Mapping[str, str]) -> str | None:
    """SSH_CONNECTION is 'client_ip client_port server_ip server_port': the server_ip part."""
    fields = env.get("SSH_CONNECTION", "").split()
    if len(fields) != 4:
        return None
    try:
        return str(ipaddress.ip_address(fields[2].split("%")[0]))
    except ValueError:
        return None


def _own_addresses() -> list[str]:
    """Non-loopback, non-link-local addresses of interfaces that are up; IPv4 first."""
    stats = psutil.net_if_stats()
    found: list[str] = []
    for name, addresses in sorted(psutil.net_if_addrs().items()):
        if name in stats and not stats[name].isup:
            continue
        for address in addresses:
            if address.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ip = ipaddress.ip_address(address.address.split("%")[0])
            except ValueError:
                continue
            if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
                found.append(str(ip))
    return sorted(found, key=lambda a: ":" in a)
