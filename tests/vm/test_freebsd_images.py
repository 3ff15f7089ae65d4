"""lab/vm/images.py: checksum files, names, downloads, the cache, --image.

The transport is fake: no test reaches download.freebsd.org or any host.
CHECKSUM.SHA512 texts are written here in FreeBSD's BSD format with the
names release/Makefile.vm gives (14.3 publishes its BASIC-CI image without
a file system in the name, 15.0 with one).
"""

import hashlib
import io
import json
import lzma
import subprocess

import pytest

from lab.vm import images

VM_14 = "https://download.freebsd.org/releases/VM-IMAGES/14.3-RELEASE/amd64/Latest/"
CI_15 = "https://download.freebsd.org/releases/CI-IMAGES/15.0-RELEASE/amd64/Latest/"
VM_15 = "https://download.freebsd.org/releases/VM-IMAGES/15.0-RELEASE/amd64/Latest/"


def checksum_text(names: list[str]) -> str:
    return "".join(
        f"SHA512 ({name}) = {hashlib.sha512(name.encode()).hexdigest()}\n"
        for name in names
    )


VM_IMAGES_14 = [
    "FreeBSD-14.3-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz",
    "FreeBSD-14.3-RELEASE-amd64-BASIC-CLOUDINIT-ufs.raw.xz",
    "FreeBSD-14.3-RELEASE-amd64-BASIC-CLOUDINIT-zfs.qcow2.xz",
    "FreeBSD-14.3-RELEASE-amd64-BASIC-CLOUDINIT-zfs.raw.xz",
    "FreeBSD-14.3-RELEASE-amd64-ufs.qcow2.xz",
    "FreeBSD-14.3-RELEASE-amd64-ufs.raw.xz",
    "FreeBSD-14.3-RELEASE-amd64-ufs.vhd.xz",
    "FreeBSD-14.3-RELEASE-amd64-ufs.vmdk.xz",
    "FreeBSD-14.3-RELEASE-amd64-zfs.qcow2.xz",
    "FreeBSD-14.3-RELEASE-amd64.qcow2.xz",
    "FreeBSD-14.3-RELEASE-amd64.raw.xz",
]
CI_IMAGES_14 = ["FreeBSD-14.3-RELEASE-amd64-BASIC-CI.raw.xz"]
VM_IMAGES_15 = [
    "FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz",
    "FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-ufs.raw.xz",
    "FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-zfs.qcow2.xz",
    "FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-zfs.raw.xz",
    "FreeBSD-15.0-RELEASE-amd64-ufs.qcow2.xz",
    "FreeBSD-15.0-RELEASE-amd64-ufs.raw.xz",
    "FreeBSD-15.0-RELEASE-amd64-zfs.qcow2.xz",
    "FreeBSD-15.0-RELEASE-amd64-zfs.raw.xz",
]
CI_IMAGES_15 = ["FreeBSD-15.0-RELEASE-amd64-BASIC-CI-ufs.raw.xz"]


class FakeTransport:
    """Serves fixed bytes per URL, honouring Range unless told not to."""

    def __init__(self, files: dict[str, bytes], ranges: bool = True):
        self.files = files
        self.ranges = ranges
        self.requests: list[tuple[str, int]] = []

    def get(self, url: str, offset: int = 0) -> images.Response:
        self.requests.append((url, offset))
        if url not in self.files:
            return images.Response(404, {}, io.BytesIO(b"not found"))
        data = self.files[url]
        if offset and self.ranges:
            if offset >= len(data):
                return images.Response(416, {}, io.BytesIO(b""))
            headers = {
                "content-length": str(len(data) - offset),
                "content-range": f"bytes {offset}-{len(data) - 1}/{len(data)}",
            }
            return images.Response(206, headers, io.BytesIO(data[offset:]))
        return images.Response(
            200, {"content-length": str(len(data))}, io.BytesIO(data)
        )


@pytest.fixture
def manifest():
    return images.load_manifest()


@pytest.fixture
def disk_bytes():
    return b"QFI\xfb" + bytes(range(256)) * 64


def served_image(disk: bytes, name: str, base: str) -> dict[str, bytes]:
    packed = lzma.compress(disk, format=lzma.FORMAT_XZ)
    digest = hashlib.sha512(packed).hexdigest()
    return {
        base + "CHECKSUM.SHA512": f"SHA512 ({name}) = {digest}\n".encode(),
        base + name: packed,
    }


def test_manifest_lists_both_releases_and_defaults_to_cloudinit(manifest):
    assert manifest.releases == ["14.3", "15.0"]
    assert images.wanted(manifest, "15.0") == images.Wanted(
        "15.0", "basic-cloudinit", "ufs", "qcow2"
    )
    assert manifest.checksum_file == "CHECKSUM.SHA512"


def test_parse_checksums_reads_bsd_lines():
    text = checksum_text(VM_IMAGES_15[:2]) + "\n"

    digests = images.parse_checksums(text)

    assert sorted(digests) == VM_IMAGES_15[:2]
    assert all(len(value) == 128 for value in digests.values())


def test_parse_checksums_names_a_malformed_line():
    with pytest.raises(images.ImageError, match="line 2: expected"):
        images.parse_checksums(checksum_text(VM_IMAGES_15[:1]) + "garbage here\n")


@pytest.mark.parametrize(
    ("version", "flavour", "fs", "fmt", "listing", "expected"),
    [
        ("14.3", None, None, None, VM_IMAGES_14,
         "FreeBSD-14.3-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz"),
        ("15.0", None, None, None, VM_IMAGES_15,
         "FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz"),
        ("15.0", "basic-cloudinit", "zfs", "raw", VM_IMAGES_15,
         "FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-zfs.raw.xz"),
        ("14.3", "basic-ci", "ufs", "raw", CI_IMAGES_14,
         "FreeBSD-14.3-RELEASE-amd64-BASIC-CI.raw.xz"),
        ("15.0", "basic-ci", "ufs", "raw", CI_IMAGES_15,
         "FreeBSD-15.0-RELEASE-amd64-BASIC-CI-ufs.raw.xz"),
        ("14.3", "plain", "ufs", "qcow2", VM_IMAGES_14,
         "FreeBSD-14.3-RELEASE-amd64-ufs.qcow2.xz"),
        ("14.3", "plain", "ufs", "raw", VM_IMAGES_14,
         "FreeBSD-14.3-RELEASE-amd64-ufs.raw.xz"),
        ("15.0", "plain", "zfs", "raw", VM_IMAGES_15,
         "FreeBSD-15.0-RELEASE-amd64-zfs.raw.xz"),
    ],
)  # fmt: skip
def test_resolve_picks_the_file_by_flavour_fs_and_format(
    manifest, version, flavour, fs, fmt, listing, expected
):
    want = images.wanted(manifest, version, flavour=flavour, fs=fs, format=fmt)
    digests = images.parse_checksums(checksum_text(listing))

    name, digest = images.resolve(manifest, want, digests)

    assert name == expected
    assert digest == hashlib.sha512(expected.encode()).hexdigest()


def test_resolve_takes_an_unsuffixed_plain_name_when_alone(manifest):
    want = images.wanted(manifest, "14.3", flavour="plain", format="vmdk")
    listing = ["FreeBSD-14.3-RELEASE-amd64.vmdk.xz"]

    name, _ = images.resolve(
        manifest, want, images.parse_checksums(checksum_text(listing))
    )

    assert name == "FreeBSD-14.3-RELEASE-amd64.vmdk.xz"


def test_resolve_says_what_the_directory_lists(manifest):
    want = images.wanted(manifest, "14.3", flavour="plain", fs="zfs", format="raw")
    digests = images.parse_checksums(checksum_text(VM_IMAGES_14))

    with pytest.raises(images.ImageError) as raised:
        images.resolve(manifest, want, digests)

    message = str(raised.value)
    assert "no plain zfs raw image in CHECKSUM.SHA512" in message
    assert "FreeBSD-14.3-RELEASE-amd64-zfs.qcow2.xz" in message


def test_urls_follow_the_release_trees(manifest):
    ci = images.wanted(manifest, "15.0", flavour="basic-ci", format="raw")
    assert images.directory_url(manifest, ci) == CI_15
    assert images.directory_url(manifest, images.wanted(manifest, "14.3")) == VM_14


def test_wanted_refuses_what_a_flavour_does_not_publish(manifest):
    with pytest.raises(images.ImageError, match="basic-ci images come as ufs in raw"):
        images.wanted(manifest, "15.0", flavour="basic-ci", format="qcow2")
    with pytest.raises(images.ImageError, match="allowed: 14.3, 15.0"):
        images.wanted(manifest, "13.5")


def test_download_resumes_from_the_part_file(tmp_path):
    data = bytes(range(256)) * 40
    transport = FakeTransport({"https://x.test/img.xz": data})
    part = tmp_path / "img.xz.part"
    part.write_bytes(data[:1000])

    images.download("https://x.test/img.xz", part, transport, progress=False)

    assert part.read_bytes() == data
    assert transport.requests == [("https://x.test/img.xz", 1000)]


def test_download_starts_over_when_the_server_ignores_the_range(tmp_path):
    data = b"abcdef" * 100
    transport = FakeTransport({"https://x.test/img.xz": data}, ranges=False)
    part = tmp_path / "img.xz.part"
    part.write_bytes(b"stale bytes")

    images.download("https://x.test/img.xz", part, transport, progress=False)

    assert part.read_bytes() == data


def test_download_of_a_complete_part_asks_and_keeps_it(tmp_path):
    data = b"complete" * 10
    part = tmp_path / "img.xz.part"
    part.write_bytes(data)

    images.download(
        "https://x.test/img.xz", part, FakeTransport({"https://x.test/img.xz": data})
    )

    assert part.read_bytes() == data


def test_download_refuses_an_http_error(tmp_path):
    with pytest.raises(images.ImageError, match="HTTP 404"):
        images.download(
            "https://x.test/gone.xz", tmp_path / "gone.part", FakeTransport({}), False
        )


def test_verify_refuses_a_mismatch_and_deletes_the_download(tmp_path):
    part = tmp_path / "img.xz.part"
    part.write_bytes(b"tampered")
    expected = hashlib.sha512(b"original").hexdigest()

    with pytest.raises(images.ImageError) as raised:
        images.verify(part, expected)

    message = str(raised.value)
    assert f"expected {expected}" in message
    assert f"got {hashlib.sha512(b'tampered').hexdigest()}" in message
    assert not part.exists()


def test_decompress_writes_the_image_and_refuses_a_truncated_file(tmp_path):
    packed = tmp_path / "disk.qcow2.xz"
    packed.write_bytes(lzma.compress(b"disk image bytes" * 50))
    assert images.decompress(packed, tmp_path / "disk.qcow2").read_bytes() == (
        b"disk image bytes" * 50
    )

    cut = tmp_path / "cut.qcow2.xz"
    cut.write_bytes(packed.read_bytes()[:40])
    with pytest.raises(images.ImageError, match="not a complete xz file"):
        images.decompress(cut, tmp_path / "cut.qcow2")
    assert not (tmp_path / "cut.qcow2").exists()
    assert not (tmp_path / "cut.qcow2.tmp").exists()


def test_obtain_downloads_verifies_decompresses_and_caches(
    tmp_path, manifest, disk_bytes
):
    name = "FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz"
    transport = FakeTransport(served_image(disk_bytes, name, VM_15))
    want = images.wanted(manifest, "15.0")

    image = images.obtain(want, manifest, tmp_path, transport, progress=False)

    assert image.path == tmp_path / "freebsd" / "15.0" / name.removesuffix(".xz")
    assert image.path.read_bytes() == disk_bytes
    assert image.origin == "download"
    assert not (image.path.parent / f"{name}.part").exists()
    record = json.loads(image.path.with_name(image.path.name + ".json").read_text())
    assert record["url"] == VM_15 + name and record["flavour"] == "basic-cloudinit"

    again = images.obtain(want, manifest, tmp_path, FakeTransport({}), progress=False)
    assert again.origin == "cache" and again.path == image.path


def test_obtain_keeps_nothing_when_the_digest_is_wrong(tmp_path, manifest, disk_bytes):
    name = "FreeBSD-14.3-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz"
    files = served_image(disk_bytes, name, VM_14)
    files[VM_14 + name] = files[VM_14 + name][:-1] + b"\x00"

    with pytest.raises(images.ImageError, match="SHA512 mismatch"):
        images.obtain(
            images.wanted(manifest, "14.3"), manifest, tmp_path,
            FakeTransport(files), progress=False,
        )  # fmt: skip

    assert list((tmp_path / "freebsd" / "14.3").iterdir()) == []


def test_urllib_transport_sends_a_range_header():
    seen = []

    class Answer(io.BytesIO):
        status = 206
        headers = {"Content-Range": "bytes 5-9/10", "Content-Length": "5"}

    def opener(request, timeout):
        seen.append((request.full_url, request.get_header("Range"), timeout))
        return Answer(b"56789")

    transport = images.UrllibTransport(timeout=7, opener=opener)
    response = transport.get("https://x.test/f", 5)

    assert seen == [("https://x.test/f", "bytes=5-", 7)]
    assert response.status == 206
    assert response.headers["content-range"] == "bytes 5-9/10"


def fake_qemu_img(fmt: str, code: int = 0):
    def runner(argv, **kwargs):
        assert argv[:3] == ["qemu-img", "info", "--output=json"]
        return subprocess.CompletedProcess(argv, code, json.dumps({"format": fmt}), "")

    return runner


def test_user_image_reads_release_and_flavour_from_the_name(tmp_path, manifest):
    path = tmp_path / "FreeBSD-15.0-RELEASE-amd64-BASIC-CI-ufs.raw"
    path.write_bytes(b"\0" * 512)

    image = images.user_image(
        str(path), manifest, lambda p: images.qemu_img_format(p, fake_qemu_img("raw"))
    )

    assert (image.version, image.flavour, image.format) == ("15.0", "basic-ci", "raw")
    assert image.origin == "user"


def test_user_image_needs_a_release_when_the_name_has_none(tmp_path, manifest):
    path = tmp_path / "mine.qcow2"
    path.write_bytes(b"QFI\xfb")
    with pytest.raises(images.ImageError, match="write --image 15.0=PATH"):
        images.user_image(str(path), manifest)

    image = images.user_image(
        f"14.3={path}",
        manifest,
        lambda p: images.qemu_img_format(p, fake_qemu_img("qcow2")),
    )

    assert image.version == "14.3" and image.flavour == "basic-cloudinit"
    assert "assuming basic-cloudinit" in image.note


def test_user_image_refuses_xz_plain_and_other_formats(tmp_path, manifest):
    packed = tmp_path / "FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz"
    packed.write_bytes(b"x")
    with pytest.raises(images.ImageError, match="xz -dk"):
        images.user_image(str(packed), manifest)

    plain = tmp_path / "FreeBSD-15.0-RELEASE-amd64-ufs.qcow2"
    plain.write_bytes(b"x")
    with pytest.raises(images.ImageError, match="starts no sshd"):
        images.user_image(str(plain), manifest)

    vmdk = tmp_path / "FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-ufs.vmdk"
    vmdk.write_bytes(b"x")
    with pytest.raises(images.ImageError, match="qemu-img convert -O qcow2"):
        images.qemu_img_format(vmdk, fake_qemu_img("vmdk"))


def test_without_qemu_img_the_name_is_trusted_and_said_so(tmp_path):
    def missing(argv, **kwargs):
        raise FileNotFoundError("qemu-img")

    image_format, note = images.qemu_img_format(tmp_path / "a.qcow2", missing)

    assert image_format == "qcow2"
    assert "trusting the name" in note


def test_qemu_img_really_reads_a_qcow2_it_made(tmp_path):
    made = tmp_path / "made.qcow2"
    created = subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(made), "1M"],
        capture_output=True, check=False,
    )  # fmt: skip
    if created.returncode != 0:
        pytest.skip("qemu-img is not installed here")

    assert images.qemu_img_format(made) == ("qcow2", "")


def test_find_prefers_the_option_then_the_cache(tmp_path, manifest, disk_bytes):
    assert images.find("15.0", manifest, [], tmp_path) is None

    name = "FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz"
    images.obtain(
        images.wanted(manifest, "15.0"), manifest, tmp_path,
        FakeTransport(served_image(disk_bytes, name, VM_15)), progress=False,
    )  # fmt: skip
    assert images.find("15.0", manifest, [], tmp_path).origin == "cache"
    assert images.find("14.3", manifest, [], tmp_path) is None

    mine = tmp_path / "FreeBSD-14.3-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2"
    mine.write_bytes(b"QFI\xfb")
    found = images.find(
        "14.3", manifest, [str(mine)], tmp_path, lambda p: ("qcow2", "")
    )
    assert found.origin == "user" and found.path == mine


def test_missing_reason_names_the_command_and_the_file(manifest):
    reason = images.missing_reason(
        "15.0", manifest, ".venv/bin/python -m pytest scenarios/test_freebsd.py"
    )

    assert reason.startswith("FreeBSD 15.0 image needed: run `")
    assert (
        "`.venv/bin/python -m pytest scenarios/test_freebsd.py --image "
        "/path/to/FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2`"
    ) in reason
    assert "download.freebsd.org" in reason and "--download-images" in reason
