"""FreeBSD's official VM images: which file, from where, verified, cached.

The manifest (fixtures/images.yaml) names releases and flavours, never files:
a file name is found in the release directory's CHECKSUM.SHA512 by flavour,
file system and format. A download resumes from its ``.part`` file, is
checked against that digest (a mismatch deletes it), is decompressed once
and kept under images/cache/freebsd/<version>/ with a JSON record of where
it came from. ``--image`` points at an image the user already has instead.

Nothing here reaches the network unless :func:`obtain` is called without a
cached image; the transport is a parameter so tests feed it fake bytes.
"""

import hashlib
import json
import logging
import lzma
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from tqdm import tqdm

from lab import schema

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "fixtures" / "images.yaml"
CACHE = REPO / "images" / "cache"
CHUNK = 1 << 20
RECORD_SUFFIX = ".json"
IMAGE_FORMATS = ("qcow2", "raw")
_CHECKSUM_LINE = re.compile(
    r"^(?P<algo>SHA(?:256|512)) \((?P<name>[^()]+)\) = (?P<hex>[0-9a-fA-F]+)$"
)
_RELEASE_IN_NAME = re.compile(r"FreeBSD-(?P<version>\d+\.\d+)-RELEASE")


class ImageError(Exception):
    """An image cannot be found, fetched, verified or used."""


class Flavour(schema.Strict):
    tree: str
    marker: str | None
    fs_in_name: Literal["required", "optional"]
    fs: list[str]
    formats: list[str]
    login: Literal["cloudinit", "empty-root", "none"]


class Manifest(schema.Strict):
    base_url: str
    arch: str
    checksum_file: str
    releases: list[str]
    default: dict[str, str]
    flavours: dict[str, Flavour]


@dataclass(frozen=True)
class Wanted:
    """One image as the lab asks for it."""

    version: str
    flavour: str
    fs: str
    format: str


@dataclass(frozen=True)
class Image:
    """An image on this machine the lab can boot."""

    path: Path
    version: str
    flavour: str
    format: str
    origin: str  # "cache", "download" or "user"
    note: str = ""
    digest: str = ""  # of the published .xz file, when known


@dataclass
class Response:
    """One HTTP answer: status, lower-case headers and a readable body."""

    status: int
    headers: dict[str, str]
    body: object  # anything with read(n) and close()

    def chunks(self) -> Iterator[bytes]:
        while chunk := self.body.read(CHUNK):
            yield chunk

    def close(self) -> None:
        self.body.close()


class Transport(Protocol):
    def get(self, url: str, offset: int = 0) -> Response: ...


@dataclass
class UrllibTransport:
    """HTTP(S) with the standard library; *offset* becomes a Range header."""

    timeout: float = 60.0
    opener: Callable = field(default=urllib.request.urlopen, repr=False)

    def get(self, url: str, offset: int = 0) -> Response:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        request = urllib.request.Request(url, headers=headers)
        try:
            answer = self.opener(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            return Response(error.code, _lower(error.headers), error)
        except urllib.error.URLError as error:
            raise ImageError(f"{url}: {error.reason}") from None
        return Response(answer.status, _lower(answer.headers), answer)


def _lower(headers) -> dict[str, str]:
    return {key.lower(): value for key, value in (headers or {}).items()}


def load_manifest(path: Path | str = MANIFEST) -> Manifest:
    return schema.load(path, Manifest)


def wanted(manifest: Manifest, version: str, **choice: str) -> Wanted:
    """The manifest's default image for *version*, with *choice* laid over it."""
    values = {**manifest.default, **{k: v for k, v in choice.items() if v}}
    picked = Wanted(version, values["flavour"], values["fs"], values["format"])
    _check_wanted(manifest, picked)
    return picked


def _check_wanted(manifest: Manifest, want: Wanted) -> None:
    if want.version not in manifest.releases:
        raise ImageError(
            f"FreeBSD {want.version}: not in the manifest; "
            f"allowed: {', '.join(manifest.releases)}"
        )
    flavour = manifest.flavours.get(want.flavour)
    if flavour is None:
        raise ImageError(
            f"flavour {want.flavour!r} unknown; allowed: {', '.join(manifest.flavours)}"
        )
    if want.fs not in flavour.fs or want.format not in flavour.formats:
        raise ImageError(
            f"{want.flavour} images come as {'/'.join(flavour.fs)} in "
            f"{'/'.join(flavour.formats)}, not {want.fs} {want.format}"
        )


def directory_url(manifest: Manifest, want: Wanted) -> str:
    tree = manifest.flavours[want.flavour].tree
    return f"{manifest.base_url}/{tree}/{want.version}-RELEASE/{manifest.arch}/Latest/"


def parse_checksums(text: str) -> dict[str, str]:
    """``SHA512 (name) = hex`` lines as {name: hex}; other lines are errors."""
    digests = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _CHECKSUM_LINE.match(line.strip())
        if match is None:
            raise ImageError(
                f"checksum file line {number}: expected "
                f"'SHA512 (<file>) = <hex>', got {line.strip()[:80]!r}"
            )
        digests[match["name"]] = match["hex"].lower()
    return digests


def name_patterns(manifest: Manifest, want: Wanted) -> list[re.Pattern]:
    """Patterns for the published file, the most explicit name first."""
    flavour = manifest.flavours[want.flavour]
    stem = re.escape(f"FreeBSD-{want.version}-RELEASE-{manifest.arch}")
    if flavour.marker:
        stem += re.escape(f"-{flavour.marker}")
    tail = re.escape(f".{want.format}.xz")
    patterns = [re.compile(f"^{stem}{re.escape('-' + want.fs)}{tail}$")]
    # Without a file system in the name, the image is UFS (release/Makefile.vm
    # linked the unsuffixed name to the VMFS=ufs image).
    if flavour.fs_in_name == "optional" and want.fs == "ufs":
        patterns.append(re.compile(f"^{stem}{tail}$"))
    return patterns


def resolve(manifest: Manifest, want: Wanted, digests: dict[str, str]):
    """(file name, digest) of the published image *want* names."""
    for pattern in name_patterns(manifest, want):
        found = sorted(name for name in digests if pattern.match(name))
        if found:
            return found[0], digests[found[0]]
    listed = ", ".join(sorted(digests)) or "nothing"
    raise ImageError(
        f"{directory_url(manifest, want)}: no {want.flavour} {want.fs} "
        f"{want.format} image in {manifest.checksum_file}; it lists {listed}"
    )


def example_name(manifest: Manifest, want: Wanted) -> str:
    """The decompressed file name people see for *want* (for messages)."""
    flavour = manifest.flavours[want.flavour]
    marker = f"-{flavour.marker}" if flavour.marker else ""
    return (
        f"FreeBSD-{want.version}-RELEASE-{manifest.arch}{marker}-{want.fs}"
        f".{want.format}"
    )


def download(url: str, part: Path, transport: Transport, progress: bool = True):
    """Fetch *url* into *part*, resuming from what *part* already holds."""
    offset = part.stat().st_size if part.exists() else 0
    response = transport.get(url, offset)
    try:
        mode = _resume_mode(response, offset, url)
        if mode is not None:
            _write(response, part, mode, offset if mode == "ab" else 0, progress)
    finally:
        response.close()
    return part


def _resume_mode(response: Response, offset: int, url: str) -> str | None:
    if response.status == 206:
        ranged = response.headers.get("content-range", "")
        if not ranged.startswith(f"bytes {offset}-"):
            raise ImageError(
                f"{url}: asked for bytes from {offset}, got range {ranged!r}"
            )
        return "ab"
    if response.status == 200:
        if offset:
            log.info("%s: the server ignored the range; starting over", url)
        return "wb"
    if response.status == 416 and offset:
        log.info("%s: nothing past byte %s; checking what is there", url, offset)
        return None
    raise ImageError(f"{url}: HTTP {response.status}")


def _write(
    response: Response, part: Path, mode: str, start: int, progress: bool
) -> None:
    length = response.headers.get("content-length")
    total = start + int(length) if length and length.isdigit() else None
    bar = tqdm(
        total=total,
        initial=start,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=part.name.removesuffix(".part"),
        disable=not progress,
    )
    with bar, open(part, mode) as out:
        for chunk in response.chunks():
            out.write(chunk)
            bar.update(len(chunk))


def verify(path: Path, expected: str) -> None:
    """Check *path* against its published SHA512; delete it on a mismatch."""
    digest = hashlib.sha512()
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected.lower():
        path.unlink()
        raise ImageError(
            f"{path.name}: SHA512 mismatch: expected {expected.lower()}, "
            f"got {actual}; the download was deleted, run again to fetch it afresh"
        )


def decompress(source: Path, target: Path) -> Path:
    """xz-decompress *source* to *target*, never leaving half a *target*."""
    scratch = target.with_name(target.name + ".tmp")
    try:
        with lzma.open(source) as src, open(scratch, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
    except (lzma.LZMAError, EOFError) as exc:
        scratch.unlink(missing_ok=True)
        raise ImageError(f"{source.name}: not a complete xz file: {exc}") from None
    scratch.replace(target)
    return target


def cache_dir(version: str, root: Path = CACHE) -> Path:
    return Path(root) / "freebsd" / version


def cached(want: Wanted, root: Path = CACHE) -> Image | None:
    """The verified image for *want* in the cache, if one was kept."""
    folder = cache_dir(want.version, root)
    if not folder.is_dir():
        return None
    for record_path in sorted(folder.glob(f"*{RECORD_SUFFIX}")):
        record = json.loads(record_path.read_text())
        image = folder / record.get("file", "")
        if _same(record, want) and image.is_file():
            return _image(want, image, "cache", record.get("url", "?"), record)
    return None


def _same(record: dict, want: Wanted) -> bool:
    return all(
        record.get(key) == getattr(want, key)
        for key in ("version", "flavour", "fs", "format")
    )


def obtain(
    want: Wanted,
    manifest: Manifest,
    root: Path = CACHE,
    transport: Transport | None = None,
    progress: bool = True,
) -> Image:
    """The cached image for *want*, downloading and verifying it if needed."""
    hit = cached(want, root)
    if hit is not None:
        return hit
    transport = transport or UrllibTransport()
    base = directory_url(manifest, want)
    digests = parse_checksums(fetch_text(transport, base + manifest.checksum_file))
    name, digest = resolve(manifest, want, digests)
    folder = cache_dir(want.version, root)
    folder.mkdir(parents=True, exist_ok=True)
    part = download(base + name, folder / f"{name}.part", transport, progress)
    verify(part, digest)
    target = decompress(part, folder / name.removesuffix(".xz"))
    part.unlink()
    _write_record(target, want, base + name, digest)
    return _image(want, target, "download", base + name, {"sha512": digest})


def _image(want: Wanted, path: Path, origin: str, url: str, record: dict) -> Image:
    return Image(
        path=path,
        version=want.version,
        flavour=want.flavour,
        format=want.format,
        origin=origin,
        note=f"{origin} from {url}",
        digest=record.get("sha512", ""),
    )


def fetch_text(transport: Transport, url: str) -> str:
    response = transport.get(url)
    try:
        if response.status != 200:
            raise ImageError(f"{url}: HTTP {response.status}")
        return b"".join(response.chunks()).decode("utf-8", errors="replace")
    finally:
        response.close()


def _write_record(image: Path, want: Wanted, url: str, digest: str) -> None:
    record = {
        "file": image.name,
        "version": want.version,
        "flavour": want.flavour,
        "fs": want.fs,
        "format": want.format,
        "url": url,
        "sha512": digest,
    }
    record_path = image.with_name(image.name + RECORD_SUFFIX)
    record_path.write_text(json.dumps(record, indent=2) + "\n")


def parse_image_option(value: str) -> tuple[str | None, Path]:
    """``--image PATH`` or ``--image VERSION=PATH``."""
    version, sep, path = value.partition("=")
    if sep and re.fullmatch(r"\d+\.\d+", version):
        return version, Path(path)
    return None, Path(value)


def user_image(
    value: str, manifest: Manifest, inspect: Callable | None = None
) -> Image:
    """An image given with ``--image``, checked before any VM is made of it."""
    version, path = parse_image_option(value)
    version = version or _version_in_name(path)
    if version is None:
        raise ImageError(
            f"--image {value}: the file name does not say the FreeBSD release; "
            "write --image 15.0=PATH"
        )
    if not path.is_file():
        raise ImageError(f"--image {value}: no such file")
    if path.suffix == ".xz":
        raise ImageError(f"--image {value}: decompress it first: xz -dk {path}")
    flavour, flavour_note = flavour_of(path.name, manifest)
    image_format, format_note = (inspect or qemu_img_format)(path)
    note = "; ".join(n for n in (flavour_note, format_note) if n)
    return Image(path.resolve(), version, flavour, image_format, "user", note)


def _version_in_name(path: Path) -> str | None:
    match = _RELEASE_IN_NAME.search(path.name)
    return match["version"] if match else None


def flavour_of(name: str, manifest: Manifest) -> tuple[str, str]:
    """The flavour a file name shows, and a note when it had to be assumed."""
    for key, flavour in manifest.flavours.items():
        if flavour.marker and f"-{flavour.marker}-" in name.replace(".", "-"):
            return key, ""
    if _RELEASE_IN_NAME.search(name):
        raise ImageError(
            f"{name}: a plain FreeBSD image starts no sshd and needs a person at "
            "its console; use a BASIC-CLOUDINIT or BASIC-CI image"
        )
    default = manifest.default["flavour"]
    return default, f"{name}: the name does not say its flavour; assuming {default}"


def qemu_img_format(path: Path, runner: Callable = subprocess.run) -> tuple[str, str]:
    """The image format qemu-img reads in *path*, or its suffix without qemu-img."""
    try:
        done = runner(
            ["qemu-img", "info", "--output=json", str(path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        return _format_from_suffix(path)
    if done.returncode != 0:
        raise ImageError(f"qemu-img cannot read {path}: {done.stderr.strip()}")
    image_format = json.loads(done.stdout).get("format", "?")
    if image_format not in IMAGE_FORMATS:
        raise ImageError(
            f"{path}: qemu-img reads it as {image_format}; the lab boots qcow2 or "
            f"raw: qemu-img convert -O qcow2 {path} {path.with_suffix('.qcow2')}"
        )
    return image_format, ""


def _format_from_suffix(path: Path) -> tuple[str, str]:
    image_format = {".qcow2": "qcow2", ".raw": "raw", ".img": "raw"}.get(path.suffix)
    if image_format is None:
        raise ImageError(
            f"{path}: qemu-img is not installed and the name does not end in "
            ".qcow2, .raw or .img; install qemu-utils"
        )
    return image_format, f"qemu-img not installed: trusting the name ({path.suffix})"


def find(
    version: str,
    manifest: Manifest,
    options: list[str],
    root: Path = CACHE,
    inspect: Callable | None = None,
) -> Image | None:
    """The image for *version*: given with --image, else in the cache."""
    for value in options:
        given, path = parse_image_option(value)
        if (given or _version_in_name(path)) == version:
            return user_image(value, manifest, inspect)
    return cached(wanted(manifest, version), root)


def missing_reason(version: str, manifest: Manifest, command: str) -> str:
    """Why a FreeBSD cell cannot run here, and the command that makes it run."""
    name = example_name(manifest, wanted(manifest, version))
    return (
        f"FreeBSD {version} image needed: run `{command} --image /path/to/{name}` "
        "or allow downloads from download.freebsd.org (network access) with "
        f"`{command} --download-images`"
    )


def availability(
    version: str,
    manifest: Manifest,
    options: list[str],
    allow_download: bool,
    command: str,
    root: Path = CACHE,
    transport: Transport | None = None,
) -> Image | str:
    """The image for *version*, or why there is none and what to run.

    Looks at ``--image`` values and the cache; downloads only when allowed.
    A string answer is a skip reason: nothing was booted, nothing created.
    """
    found = find(version, manifest, options, root)
    if found is not None:
        return found
    if not allow_download:
        return missing_reason(version, manifest, command)
    try:
        return obtain(wanted(manifest, version), manifest, root, transport)
    except ImageError as exc:
        return (
            f"{missing_reason(version, manifest, command)}; the download failed: {exc}"
        )
