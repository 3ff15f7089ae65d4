"""Driving the vpnjail command inside a lab world, as its users would.

vpnjail works in the world's ``host`` namespace (``--host-netns``); its
namespaces carry the run id in their prefix and its daemons the run's tag,
so the lab's reaper finds whatever a failed test leaves.
"""

import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from lab import runid
from lab.platforms.base import World

log = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK_POOL = "192.0.2.0/24"


class VpnjailRunner:
    def __init__(
        self,
        world: World,
        run_id: str,
        workdir: Path,
        label: str,
        psk: str,
        xauth_password: str,
    ):
        self.world = world
        self.run_id = run_id
        self.profiles = workdir / "profiles"
        self.secrets = workdir / "secrets"
        self.state_dir = os.path.join(runid.runtime_dir(run_id), f"{label}-state")
        self.prefix = f"{runid.namespace_prefix(run_id)}{label}-"
        self.profiles.mkdir(parents=True, exist_ok=True)
        self.secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._secret("psk", psk)
        self._secret("xauth", xauth_password)

    def _secret(self, name: str, value: str) -> None:
        path = self.secrets / name
        path.write_text(value + "\n")
        path.chmod(0o600)

    def write_profile(
        self,
        name: str,
        gateway: str,
        user: str,
        backend: str = "libipsec",
        tun: str = "auto",
        forwards: list[dict] | None = None,
        dpd: tuple[int, int] = (5, 15),
    ) -> Path:
        profile = {
            "name": name,
            "gateway": gateway,
            "ike": {
                "mode": "aggressive",
                "proposals": ["aes256-sha256-modp2048", "aes128-sha256-modp2048"],
                "esp_proposals": ["aes256-sha256-modp2048", "aes128-sha1-modp2048"],
                "dpd": {"delay": dpd[0], "timeout": dpd[1]},
            },
            "local_id": {"type": "keyid", "value": "labgroup"},
            "remote_id": {"type": "address", "value": gateway},
            "auth": {
                "psk": {"file": str(self.secrets / "psk")},
                "xauth": {
                    "user": user,
                    "password": {"file": str(self.secrets / "xauth")},
                },
            },
            "backend": backend,
            "tun": tun,
            "port_forwards": forwards or [],
        }
        path = self.profiles / f"{name}.yaml"
        path.write_text(yaml.safe_dump(profile, sort_keys=False))
        return path

    def argv(self, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "vpnjail",
            "--profiles", str(self.profiles),
            "--state-dir", self.state_dir,
            "--host-netns", self.world.names["host"],
            "--prefix", self.prefix,
            "--link-pool", LINK_POOL,
            *args,
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=REPO, **{runid.ENV_VAR: self.run_id})

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.argv(*args),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        log.debug(
            "[host] vpnjail %s -> %s\n%s%s",
            " ".join(args),
            result.returncode,
            result.stdout,
            result.stderr,
        )
        return result

    def supervise(self, log_path: str, interval: float = 1.0) -> subprocess.Popen:
        with open(log_path, "ab") as out:
            return subprocess.Popen(
                self.argv("run", "--interval", str(interval)),
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stack(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def charon_log(self, name: str) -> str:
        for path in (
            os.path.join(self.state_dir, name, "run", "charon.log"),
            os.path.join(self.state_dir, f"{name}.failed.log"),
        ):
            if os.path.exists(path):
                with open(path, errors="replace") as src:
                    return src.read()
        return ""

    def in_stack(self, name: str, argv: list[str], timeout: float = 15):
        return subprocess.run(
            ["ip", "netns", "exec", self.stack(name), *argv],
            env=self.env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ask(self, name: str, address: str, port: int, token: str, expect: str):
        """A TCP exchange from profile *name*'s stack; True if *expect* answered."""
        result = self.in_stack(
            name,
            [sys.executable, "-m", "lab.service", "ask", "--address", address,
             "--port", str(port), "--token", token, "--expect-name", expect],
        )  # fmt: skip
        return result.returncode == 0, (result.stdout or result.stderr).strip()
