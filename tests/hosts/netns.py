"""Hosts on one machine: Linux network namespaces on one bridge (`ip netns`, veth pairs).

`with Hosts() as hosts:` makes a bridge in the root namespace holding the subnet's first
address (`hosts.gateway`: the root namespace is a host too, the one whose services, such as
PostgreSQL and Redis on loopback, stay where they are); `hosts.add("w1")` makes a namespace
with its own loopback and one veth pair, its end in the namespace called eth0 and given the
next address, the other end a port of the bridge. `host.exec` is the command prefix that
runs a program there; `host.cut()` takes the bridge's end of its link down: the host keeps
its address and its processes, but nothing reaches it and nothing leaves it, not even a
reset. On exit every namespace (with its veth pair) and the bridge are deleted, whatever
happened. Names carry the test process's id, so runs side by side do not meet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from types import TracebackType


def _ip(*argv: str, namespace: str = "") -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    done = subprocess.run([*prefix, "ip", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}")


def netns_available() -> tuple[bool, str]:
    """Whether this machine can make network namespaces here (Linux, `ip`, root), and why
    not."""
    if not sys.platform.startswith("linux"):
        return False, f"network namespaces are Linux's ({sys.platform})"
    if shutil.which("ip") is None:
        return False, "no `ip` (iproute2)"
    probe = f"troop-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        return False, str(exc)
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return True, ""


@dataclass
class Host:
    """One namespace: its name, its address on the bridge, the bridge's end of its link."""

    namespace: str
    address: str
    link: str

    @property
    def exec(self) -> list[str]:
        """The prefix that runs a command in this host (`ip netns exec NAME`)."""
        return ["ip", "netns", "exec", self.namespace]

    def cut(self) -> None:
        """Take its link down, as a pulled cable or a dead switch port would."""
        _ip("link", "set", self.link, "down")


@dataclass
class Hosts:
    """A bridge and the namespaces on it (a context manager; see the module's docstring)."""

    tag: str = field(default_factory=lambda: str(os.getpid() % 100_000))
    subnet: int = field(default_factory=lambda: os.getpid() % 250 + 1)  # 10.77.<subnet>.0/24
    hosts: list[Host] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"trb{self.tag}"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge."""
        return f"10.77.{self.subnet}.1"

    def __enter__(self) -> Hosts:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise
        return self

    def add(self, role: str) -> Host:
        """A new host named `role` (a few letters), with the next address."""
        host = Host(
            namespace=f"troop-{self.tag}-{role}",
            address=f"10.77.{self.subnet}.{len(self.hosts) + 2}",
            link=f"tr{self.tag}{role}"[:15],
        )
        self.hosts.append(host)
        inside = f"{host.link[:12]}-in"
        _ip("netns", "add", host.namespace)
        _ip("link", "add", host.link, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", host.namespace)
        _ip("link", "set", inside, "name", "eth0", namespace=host.namespace)
        _ip("addr", "add", f"{host.address}/24", "dev", "eth0", namespace=host.namespace)
        _ip("link", "set", "eth0", "up", namespace=host.namespace)
        _ip("link", "set", "lo", "up", namespace=host.namespace)
        _ip("link", "set", host.link, "master", self.bridge)
        _ip("link", "set", host.link, "up")
        return host

    def close(self) -> None:
        """Delete every namespace (its veth pair goes with it) and the bridge; quietly
        skips what is already gone."""
        for host in self.hosts:
            for argv in (["netns", "delete", host.namespace], ["link", "delete", host.link]):
                subprocess.run(["ip", *argv], capture_output=True, check=False)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, check=False)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
