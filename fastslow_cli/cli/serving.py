"""Running `fastslow serve`: the exposure rule and uvicorn, with one line once it is ready."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
from collections.abc import Callable
from typing import Any

from fastslow_cli.errors import FastslowError, UsageError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, say: Callable[[str], None]) -> None:
    """Loopback needs nothing; any other address warns, and is refused without a token."""
    if is_loopback(host):
        return
    if not token:
        raise UsageError(
            f"--host {host} makes the server (and every indexed file) reachable from other machines: "
            "add --token SECRET (then open http://HOST:PORT/?token=SECRET), or keep the default --host 127.0.0.1"
        )
    say(f"warning: listening on {host}, not loopback: anyone who can reach this machine and has the token can "
        "search the index and download its files")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise FastslowError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port or --host") from None
    return sock


def run_server(app: Any, host: str, port: int, say: Callable[[str], None]) -> None:
    """Serve `app` with uvicorn until Ctrl-C (or SIGTERM), then exit 0; `serving http://HOST:PORT/` is
    said once it accepts requests."""
    import uvicorn

    sock = bind(host, port)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            shown = f"[{host}]" if ":" in host else host
            say(f"serving http://{shown}:{bound}/")
        await task

    # uvicorn shuts down on SIGTERM, then raises it again with the handler it found: make that
    # handler end like Ctrl-C (exit 0, "stopped", temporary files deleted), not kill the process.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on: for a server, that is the way to stop
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    say("stopped")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
