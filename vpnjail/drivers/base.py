"""The interface both drivers implement; the rest of vpnjail uses only this.

A driver turns a profile into plans (see :mod:`vpnjail.plan`) and knows how
to carry out one action in the host stack or in a profile's stack. It never
decides policy: names, addresses, secrets and strongSwan settings come from
the manager.
"""

from dataclasses import dataclass, field

from vpnjail.plan import Plan, Run, Spawn
from vpnjail.profile import Profile


@dataclass(frozen=True)
class LinkAddresses:
    host: str  # address/prefix on the host side
    jail: str  # address/prefix inside the profile's stack


@dataclass(frozen=True)
class Layout:
    """Where one profile's things live, as the driver names them."""

    name: str  # the profile name
    stack: str  # namespace or jail name
    host_if: str  # host end of the link
    jail_if: str  # jail end of the link
    run_dir: str  # host-side path of the stack's private /run or /var/run
    conf_dir: str  # host-side path of the stack's strongSwan configuration
    vici_socket: str  # host-side path of the stack's VICI socket
    log_file: str  # host-side path of charon's log
    firewall: str  # nftables table or pf anchor name


@dataclass
class Needs:
    """What a profile needs from the host, derived from its settings."""

    tun: bool
    kernel_ipsec: bool
    extra: dict = field(default_factory=dict)


class Driver:
    system: str  # "linux" or "freebsd"

    def layout(self, profile: Profile) -> Layout:
        raise NotImplementedError

    def needs(self, profile: Profile) -> Needs:
        raise NotImplementedError

    def plan_up(self, profile: Profile, link: LinkAddresses, charon_conf: str) -> Plan:
        """Create the stack, link, firewall, write config, start charon."""
        raise NotImplementedError

    def plan_after_up(self, profile: Profile, virtual_ip: str | None) -> Plan:
        """What needs the tunnel's virtual IP: by default, nothing."""
        return Plan(profile.name)

    def display_argv(self, action, layout: Layout) -> list[str]:
        """The command line *action* will run as, for ``render``."""
        return list(action.argv)

    def plan_down(self, profile_name: str) -> Plan:
        """Stop charon and remove everything plan_up created."""
        raise NotImplementedError

    def run(self, action: Run, layout: Layout):
        """Carry out *action* in the host stack or the profile's stack."""
        raise NotImplementedError

    def spawn(self, action: Spawn, layout: Layout) -> int:
        """Start a detached daemon; return its pid."""
        raise NotImplementedError

    def wait_started(self, action: Spawn, layout: Layout, pid: int, timeout: float):
        """Return once the spawned daemon is ready; raise if it died."""
        raise NotImplementedError

    def stop(self, layout: Layout) -> None:
        """Stop every daemon of the profile."""
        raise NotImplementedError

    def forget(self, layout: Layout) -> None:
        """Remove the profile's private files (run and config directories)."""
        raise NotImplementedError

    def existing_objects(self, profile: Profile) -> list[str]:
        """Objects with this profile's names that exist right now."""
        return []

    def advisories(self, profiles: list[Profile]) -> list[str]:
        """Warnings that do not stop a profile (known bugs of a version)."""
        return []

    def preflight(self, profiles: list[Profile]) -> list[str]:
        """Host problems for these profiles, each with the command fixing it."""
        raise NotImplementedError

    def leftovers(self, running: set[str]) -> list[str]:
        """Stacks, links and firewall objects of profiles not in *running*."""
        raise NotImplementedError

    def remove_leftover(self, item: str) -> None:
        raise NotImplementedError
