"""Tests of the SADB_ADD probe without a kernel.

A fake transport plays the kernel: it decodes each request with the codec,
keeps an SAD of its own, and answers the way FreeBSD's key.c does (errors
echo the request with ``sadb_msg_errno`` set; ADD and DELETE replies carry
the request's header). Policies decide which requests it refuses, so each
candidate cause can be replayed.
"""

import errno
import json
import runpy
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lab.pfkey import pfkeyv2 as pk
from lab.pfkey import probe

BSD = pk.freebsd_layout()
LINUX = pk.linux_layout()
SPI_BASE = 0x7E001200
REMOVED_ENC = {2, 3, 6, 7, 18, 19, 22}
REMOVED_AUTH = {2, 9}
PFKEY_DIR = Path(__file__).resolve().parents[2] / "lab" / "pfkey"


def sa_of(message: pk.Message) -> pk.SaExt:
    sa = message.get(pk.ExtType.SA)
    assert isinstance(sa, pk.SaExt), message
    return sa


def nat_t_ports(message: pk.Message) -> tuple[int, ...]:
    return tuple(
        ext.port for ext in message.extensions if isinstance(ext, pk.NatTPortExt)
    )


class FakeKernel:
    """A PF_KEY peer with an SAD, answering like FreeBSD's key.c."""

    def __init__(self, layout=BSD, policy=None, drop_reply_for=frozenset()):
        self.layout = layout
        self.policy = policy or freebsd15
        self.drop_reply_for = set(drop_reply_for)
        self.sad: dict[int, pk.Message] = {}
        self.requests: list[pk.Message] = []
        self.outbox: list[bytes] = []
        self.noise: list[bytes] = []

    def send(self, data: bytes) -> None:
        request = pk.decode_message(data, self.layout)
        self.requests.append(request)
        answer = self.handle(request)
        self.outbox.extend(self.noise)
        spi = self.spi_of(request)
        if answer is not None and (request.msg_type, spi) not in self.drop_reply_for:
            self.outbox.append(pk.encode_message(answer, self.layout))

    def receive(self, timeout: float) -> bytes:
        if not self.outbox:
            raise TimeoutError
        return self.outbox.pop(0)

    def close(self) -> None:
        self.outbox.clear()

    def spi_of(self, request: pk.Message) -> int:
        if request.msg_type == pk.MsgType.GETSPI:
            return request.get(pk.ExtType.SPIRANGE).min_spi
        return sa_of(request).spi

    def handle(self, request: pk.Message) -> pk.Message:
        handler = {
            pk.MsgType.GETSPI: self.getspi,
            pk.MsgType.ADD: self.add,
            pk.MsgType.DELETE: self.delete,
            pk.MsgType.GET: self.get,
        }[request.msg_type]
        return handler(request)

    def getspi(self, request: pk.Message) -> pk.Message:
        spi = self.spi_of(request)
        refusal = errno.EEXIST if spi in self.sad else self.policy(request)
        if refusal:
            return replace(request, errno=refusal)
        larval = pk.SaExt(spi, state=pk.SaState.LARVAL)
        addresses = request.extensions[:2]
        self.sad[spi] = replace(
            request, extensions=(larval, pk.Sa2Ext(0, 0), *addresses)
        )
        return replace(request, extensions=(larval, *addresses))

    def add(self, request: pk.Message) -> pk.Message:
        spi = sa_of(request).spi
        refusal = errno.EEXIST if spi in self.sad else self.policy(request)
        if refusal:
            return replace(request, errno=refusal)
        self.sad[spi] = request
        kept = tuple(e for e in request.extensions if not isinstance(e, pk.KeyExt))
        return replace(request, extensions=kept)

    def delete(self, request: pk.Message) -> pk.Message:
        assert request.get(pk.ExtType.SA) is not None, "DELETE without SA ext"
        spi = sa_of(request).spi
        if spi not in self.sad:
            return replace(request, errno=errno.ESRCH)
        del self.sad[spi]
        return request

    def get(self, request: pk.Message) -> pk.Message:
        stored = self.sad.get(sa_of(request).spi)
        if stored is None:
            return replace(request, errno=errno.ESRCH)
        return replace(request, extensions=stored.extensions)


def freebsd15(request: pk.Message) -> int:
    """FreeBSD 15 with ipsec.ko: removed algorithms and port 0 fail."""
    if request.msg_type != pk.MsgType.ADD:
        return 0
    sa = sa_of(request)
    if sa.encrypt in REMOVED_ENC or sa.auth in REMOVED_AUTH:
        return errno.EINVAL
    if 0 in nat_t_ports(request):
        return errno.EINVAL
    return 0


def no_ipsec_module(request: pk.Message) -> int:
    return errno.EINVAL if request.msg_type == pk.MsgType.ADD else 0


def broken_nat_t(request: pk.Message) -> int:
    has_nat_t = request.get(pk.ExtType.X_NAT_T_TYPE) is not None
    return errno.EINVAL if has_nat_t else freebsd15(request)


def broken_replay(request: pk.Message) -> int:
    has_replay = request.get(pk.ExtType.X_SA_REPLAY) is not None
    return errno.EINVAL if has_replay else freebsd15(request)


def accepts_everything(request: pk.Message) -> int:
    return 0


def accepts_all_but_port_0(request: pk.Message) -> int:
    return errno.EINVAL if 0 in nat_t_ports(request) else 0


def run(kernel: FakeKernel, **kwargs) -> probe.ProbeReport:
    options = {"spi_base": SPI_BASE, "timeout": 0.2, "pid": 4242}
    options.update(kwargs)
    return probe.run_probe(kernel, kernel.layout, **options)


def steps_by_name(report: probe.ProbeReport) -> dict[str, probe.StepResult]:
    return {step.variant: step for step in report.steps}


# Variant construction


def test_variants_cover_the_brief():
    names = [variant.name for variant in probe.build_variants()]

    assert names == [
        "baseline",
        "nat-t",
        "replay",
        "nat-t+replay",
        "3des-cbc",
        "des-cbc",
        "blowfish-cbc",
        "cast128-cbc",
        "camellia-cbc",
        "hmac-md5",
        "aes-xcbc",
        "aes-gcm-8",
        "aes-gcm-12",
        "aes-gcm-16",
        "control-nat-t-port-0",
        "control-duplicate-spi",
    ]


@pytest.mark.parametrize(
    ("name", "encrypt", "enc_len", "auth", "auth_len"),
    [
        ("baseline", 12, 16, 3, 20),
        ("3des-cbc", 3, 24, 3, 20),
        ("des-cbc", 2, 8, 3, 20),
        ("blowfish-cbc", 7, 16, 3, 20),
        ("cast128-cbc", 6, 16, 3, 20),
        ("camellia-cbc", 22, 16, 3, 20),
        ("hmac-md5", 12, 16, 2, 16),
        ("aes-xcbc", 12, 16, 9, 16),
        ("aes-gcm-8", 18, 20, 0, 0),
        ("aes-gcm-12", 19, 20, 0, 0),
        ("aes-gcm-16", 20, 20, 0, 0),
    ],
)
def test_variant_algorithms_and_key_sizes(name, encrypt, enc_len, auth, auth_len):
    variant = {v.name: v for v in probe.build_variants()}[name]

    message = probe.build_add(variant, SPI_BASE, BSD)

    sa = sa_of(message)
    assert (sa.encrypt, sa.auth) == (encrypt, auth)
    assert len(message.get(pk.ExtType.KEY_ENCRYPT).key) == enc_len
    auth_key = message.get(pk.ExtType.KEY_AUTH)
    assert (0 if auth_key is None else len(auth_key.key)) == auth_len


def test_baseline_add_has_strongswan_shape_and_order():
    baseline = probe.build_variants()[0]

    message = probe.build_add(baseline, 0x7E001201, BSD)

    assert (message.msg_type, message.satype) == (pk.MsgType.ADD, pk.SaType.ESP)
    assert [ext.exttype for ext in message.extensions] == [1, 19, 5, 6, 4, 3, 9, 8]
    sa = sa_of(message)
    assert (sa.spi, sa.state, sa.replay, sa.flags) == (0x7E001201, 1, 0, 0)
    sa2 = message.get(pk.ExtType.X_SA2)
    assert (sa2.mode, sa2.reqid) == (pk.IpsecMode.TUNNEL, probe.PROBE_REQID)
    src, dst = message.get(5), message.get(6)
    assert (str(src.address), str(dst.address)) == ("198.51.100.1", "192.0.2.1")
    assert (src.proto, src.prefixlen, src.port) == (0, 0, 0)
    assert message.get(4).addtime == probe.SOFT_ADDTIME
    assert message.get(3).addtime == probe.HARD_ADDTIME
    assert len(pk.encode_message(message, BSD)) == 216


def test_nat_t_and_replay_inbound_form():
    variant = {v.name: v for v in probe.build_variants()}["nat-t+replay"]

    message = probe.build_add(variant, SPI_BASE, BSD)

    order = [ext.exttype for ext in message.extensions]
    assert order == [1, 26, 19, 5, 6, 4, 3, 9, 8, 20, 21, 22]
    assert sa_of(message).replay == 4
    assert message.get(pk.ExtType.X_SA_REPLAY).replay == 32
    assert message.get(pk.ExtType.X_NAT_T_TYPE).encap_type == 2
    assert nat_t_ports(message) == (4500, 4500)


def test_control_sends_zero_destination_port():
    variant = {v.name: v for v in probe.build_variants()}["control-nat-t-port-0"]

    assert nat_t_ports(probe.build_add(variant, SPI_BASE, BSD)) == (4500, 0)


def test_getspi_reserves_exactly_one_spi():
    message = probe.build_getspi(SPI_BASE)

    spirange = message.get(pk.ExtType.SPIRANGE)
    assert (spirange.min_spi, spirange.max_spi) == (SPI_BASE, SPI_BASE)
    assert message.get(pk.ExtType.SA) is None


def test_delete_always_names_the_spi():
    message = probe.build_delete(SPI_BASE)

    assert sa_of(message).spi == SPI_BASE
    assert [ext.exttype for ext in message.extensions] == [1, 5, 6]


def test_session_refuses_delete_without_sa_extension():
    session = probe.PfkeySession(FakeKernel(), BSD, pid=1)
    bare = pk.Message(pk.MsgType.DELETE, pk.SaType.ESP)

    with pytest.raises(probe.ProbeError, match="without an SA extension"):
        session.exchange(bare)


@pytest.mark.parametrize("bad", [0, 0xFF, 0xFFFFFFFF])
def test_spi_base_range(bad):
    with pytest.raises(ValueError, match="SPI base"):
        probe.check_spi_base(bad)


def test_random_spi_base_is_valid():
    for _ in range(50):
        assert probe.check_spi_base(probe.choose_spi_base()) >= 0x7E000000


# Runs against the fake kernel: one per candidate cause


@pytest.mark.parametrize(
    ("policy", "code"),
    [
        (no_ipsec_module, probe.VerdictCode.TRANSFORM_MISSING),
        (freebsd15, probe.VerdictCode.ALGORITHM),
        (broken_nat_t, probe.VerdictCode.NAT_T),
        (broken_replay, probe.VerdictCode.REPLAY),
        (accepts_everything, probe.VerdictCode.UNRELIABLE),
        (accepts_all_but_port_0, probe.VerdictCode.ACCEPTS_ALL),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_pattern_gives_verdict_and_cleans_up(policy, code):
    kernel = FakeKernel(policy=policy)

    report = run(kernel)

    assert report.verdict.code is code
    assert kernel.sad == {}
    created = {s.spi for s in report.steps if s.accepted}
    deleted = {sa_of(r).spi for r in kernel.requests if r.msg_type == pk.MsgType.DELETE}
    assert deleted == created
    assert all(item.outcome == "deleted" for item in report.cleanup)


def test_missing_module_pattern_details():
    kernel = FakeKernel(policy=no_ipsec_module)

    report = run(kernel)

    steps = steps_by_name(report)
    assert steps["getspi"].accepted
    assert steps["baseline"].errno == errno.EINVAL
    assert steps["control-duplicate-spi"].errno == errno.EEXIST
    assert [item.spi for item in report.cleanup] == [SPI_BASE]
    assert any("GETSPI succeeded" in reason for reason in report.verdict.reasons)
    assert "kldload ipsec" in report.verdict.summary


def test_algorithm_pattern_lists_refused_algorithms():
    report = run(FakeKernel(policy=freebsd15))

    steps = steps_by_name(report)
    refused = {name for name, step in steps.items() if step.refused}
    assert refused == {
        "3des-cbc",
        "des-cbc",
        "blowfish-cbc",
        "cast128-cbc",
        "camellia-cbc",
        "hmac-md5",
        "aes-xcbc",
        "aes-gcm-8",
        "aes-gcm-12",
        "control-nat-t-port-0",
        "control-duplicate-spi",
    }
    assert any("3des-cbc (EINVAL)" in reason for reason in report.verdict.reasons)
    assert any("reaches key_setnatt" in r for r in report.verdict.reasons)


def test_spis_are_distinct_and_from_the_chosen_block():
    kernel = FakeKernel(policy=accepts_everything)

    report = run(kernel)

    adds = [s for s in report.steps if s.message == "ADD" and s.spi is not None]
    own = [s.spi for s in adds if s.category is not probe.Category.CONTROL_DUPLICATE]
    assert len(set(own)) == len(own)
    assert all(SPI_BASE < spi < SPI_BASE + probe.SPI_SPAN for spi in own)
    assert steps_by_name(report)["control-duplicate-spi"].spi == SPI_BASE


def test_requests_carry_our_pid_and_increasing_seq():
    kernel = FakeKernel()

    run(kernel)

    assert {r.pid for r in kernel.requests} == {4242}
    seqs = [r.seq for r in kernel.requests]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_foreign_broadcasts_and_fragments_are_ignored():
    kernel = FakeKernel(policy=freebsd15)
    foreign = pk.Message(pk.MsgType.ADD, 3, seq=1, pid=999, errno=errno.EINVAL)
    kernel.noise = [pk.encode_message(foreign, BSD), b"\x02\x03"]

    report = run(kernel)

    assert report.verdict.code is probe.VerdictCode.ALGORITHM
    assert steps_by_name(report)["baseline"].accepted


def test_lost_answer_is_checked_before_deleting():
    spi = SPI_BASE + 1
    kernel = FakeKernel(drop_reply_for={(pk.MsgType.ADD, spi)})

    report = run(kernel)

    assert steps_by_name(report)["baseline"].stage is probe.Stage.TIMEOUT
    assert report.verdict.code is probe.VerdictCode.INCONCLUSIVE
    gets = [r for r in kernel.requests if r.msg_type == pk.MsgType.GET]
    assert [sa_of(r).spi for r in gets] == [spi]
    assert kernel.sad == {}


def test_someone_elses_sa_is_never_deleted():
    spi = SPI_BASE + 1
    foreign = probe.build_add(probe.build_variants()[0], spi, BSD)
    foreign = replace(
        foreign,
        extensions=tuple(
            pk.Sa2Ext(reqid=999) if isinstance(e, pk.Sa2Ext) else e
            for e in foreign.extensions
        ),
    )
    kernel = FakeKernel(drop_reply_for={(pk.MsgType.ADD, spi)})
    kernel.sad[spi] = foreign

    report = run(kernel)

    assert kernel.sad == {spi: foreign}
    outcome = {item.spi: item.outcome for item in report.cleanup}
    assert outcome[spi] == "not-ours"


def test_existing_spi_is_left_alone():
    spi = SPI_BASE + 1
    kernel = FakeKernel()
    kernel.sad[spi] = pk.Message(pk.MsgType.ADD, 3)

    report = run(kernel)

    assert steps_by_name(report)["baseline"].errno == errno.EEXIST
    assert spi in kernel.sad
    deleted = [sa_of(r).spi for r in kernel.requests if r.msg_type == 4]
    assert spi not in deleted


class Interrupted(Exception):
    pass


def test_cleanup_runs_even_when_the_run_is_interrupted():
    kernel = FakeKernel(policy=accepts_everything)
    real_send = kernel.send
    calls = {"n": 0}

    def send(data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise Interrupted
        real_send(data)

    kernel.send = send

    with pytest.raises(Interrupted):
        run(kernel)

    assert kernel.sad == {}


def test_send_errors_are_recorded_not_raised():
    kernel = FakeKernel()

    def refuse(data: bytes) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    kernel.send = refuse

    report = run(kernel)

    steps = steps_by_name(report)
    assert steps["baseline"].stage is probe.Stage.SEND
    assert steps["baseline"].errno == errno.EINVAL
    assert report.verdict.code is probe.VerdictCode.MIXED
    assert "send() refused" in probe.explain_step(steps["baseline"])


def test_linux_layout_skips_freebsd_only_replay_variants():
    kernel = FakeKernel(layout=LINUX)

    report = run(kernel)

    steps = steps_by_name(report)
    assert steps["replay"].stage is probe.Stage.SKIPPED
    assert steps["nat-t+replay"].stage is probe.Stage.SKIPPED
    assert all(r.get(26) is None for r in kernel.requests)
    assert report.verdict.code is probe.VerdictCode.ALGORITHM
    assert kernel.sad == {}


# Verdict from a table of errnos


EINVAL = errno.EINVAL
ALL_ADDS = [v.name for v in probe.build_variants()]


def table(default: int | None = 0, **overrides: int | None) -> dict:
    rows = {"getspi": 0}
    rows.update({name: default for name in ALL_ADDS})
    rows["control-nat-t-port-0"] = EINVAL
    rows["control-duplicate-spi"] = errno.EEXIST
    rows.update({name.replace("_", "-"): value for name, value in overrides.items()})
    return rows


def test_verdict_everything_refused():
    rows = table(default=EINVAL)

    verdict = probe.verdict_from_errnos(rows)

    assert verdict.code is probe.VerdictCode.TRANSFORM_MISSING


def test_verdict_everything_refused_with_other_errno_is_mixed():
    rows = table(default=errno.EOPNOTSUPP)

    assert probe.verdict_from_errnos(rows).code is probe.VerdictCode.MIXED


def test_verdict_one_removed_algorithm_is_enough():
    rows = table(**{"3des_cbc": EINVAL})

    verdict = probe.verdict_from_errnos(rows)

    assert verdict.code is probe.VerdictCode.ALGORITHM
    assert "refused algorithms: 3des-cbc (EINVAL)" in verdict.reasons


def test_verdict_nat_t_only():
    rows = table(nat_t=EINVAL, **{"nat-t+replay": EINVAL})

    assert probe.verdict_from_errnos(rows).code is probe.VerdictCode.NAT_T


def test_verdict_replay_only():
    rows = table(replay=EINVAL, **{"nat-t+replay": EINVAL})

    assert probe.verdict_from_errnos(rows).code is probe.VerdictCode.REPLAY


def test_verdict_nat_t_and_replay_both_is_mixed():
    rows = table(replay=EINVAL, nat_t=EINVAL, **{"nat-t+replay": EINVAL})

    assert probe.verdict_from_errnos(rows).code is probe.VerdictCode.MIXED


def test_verdict_only_the_combination_fails_is_mixed():
    rows = table(**{"nat-t+replay": EINVAL})

    assert probe.verdict_from_errnos(rows).code is probe.VerdictCode.MIXED


def test_verdict_control_accepted_is_unreliable():
    rows = table(default=EINVAL, control_nat_t_port_0=0)

    assert probe.verdict_from_errnos(rows).code is probe.VerdictCode.UNRELIABLE


def test_verdict_baseline_unanswered_is_inconclusive():
    rows = table(baseline=None)

    verdict = probe.verdict_from_errnos(rows)

    assert verdict.code is probe.VerdictCode.INCONCLUSIVE
    assert verdict.reasons == ("baseline: timeout",)


def test_verdict_without_control_is_inconclusive():
    rows = table()
    del rows["control-nat-t-port-0"]

    assert probe.verdict_from_errnos(rows).code is probe.VerdictCode.INCONCLUSIVE


def test_verdict_baseline_refused_but_others_accepted_is_mixed():
    rows = table(baseline=EINVAL)

    verdict = probe.verdict_from_errnos(rows)

    assert verdict.code is probe.VerdictCode.MIXED
    assert "but accepted: nat-t" in verdict.reasons[0]


def test_verdict_gcm16_refused_is_flagged():
    rows = table(aes_gcm_16=errno.EOPNOTSUPP, aes_gcm_8=EINVAL)

    verdict = probe.verdict_from_errnos(rows)

    assert verdict.code is probe.VerdictCode.ALGORITHM
    assert any("crypto drivers" in reason for reason in verdict.reasons)


def test_verdict_only_gcm16_refused_is_mixed():
    rows = table(aes_gcm_16=EINVAL)

    verdict = probe.verdict_from_errnos(rows)

    assert verdict.code is probe.VerdictCode.MIXED
    assert "only AES-GCM-16 refused" in verdict.reasons[0]


def test_verdict_rejects_unknown_variant_names():
    with pytest.raises(ValueError, match="bogus"):
        probe.verdict_from_errnos({"bogus": 0})


# Presentation


def test_text_report_has_table_and_verdict():
    report = run(FakeKernel(policy=no_ipsec_module))

    text = report.render_text()

    lines = text.splitlines()
    assert lines[2].split() == ["variant", "message", "errno", "meaning"]
    baseline = next(line for line in lines if line.startswith("baseline "))
    assert baseline.split()[1:3] == ["ADD", "EINVAL"]
    assert "verdict: ipsec-transform-missing" in text
    assert f"0x{SPI_BASE:08x} deleted" in text


def test_json_report_is_machine_readable():
    report = run(FakeKernel(policy=freebsd15))

    data = json.loads(report.to_json())

    assert data["schema"] == "vpnjail/pfkey-probe/1"
    assert data["verdict"]["code"] == "algorithm"
    first = data["steps"][1]
    assert (first["variant"], first["message"], first["errno"]) == (
        "baseline",
        "ADD",
        0,
    )
    assert data["steps"][5]["errno_name"] == "EINVAL"
    assert data["addresses"] == {"src": "198.51.100.1", "dst": "192.0.2.1"}
    assert {item["outcome"] for item in data["cleanup"]} == {"deleted"}


@pytest.mark.parametrize(
    ("category", "number", "text"),
    [
        (probe.Category.CONTROL, errno.EINVAL, "key_setnatt rejects port 0"),
        (probe.Category.REMOVED_ALGORITHM, errno.EINVAL, "esp_init/ah_init0"),
        (probe.Category.BASELINE, errno.EINVAL, "xform_init"),
        (probe.Category.CONTROL_DUPLICATE, errno.EEXIST, "key_add ran"),
        (probe.Category.BASELINE, errno.EEXIST, "not ours"),
        (probe.Category.AEAD, errno.EOPNOTSUPP, "crypto_newsession"),
        (probe.Category.BASELINE, 0, "accepted"),
    ],
)
def test_meaning_of_answers(category, number, text):
    step = probe.StepResult("x", category, "ADD", 1, probe.Stage.REPLY, number)

    assert text in probe.explain_step(step)


# Command line


def fake_socket_error(number: int):
    def factory(*args, **kwargs):
        raise OSError(number, "simulated")

    return factory


def assert_one_line(err: str) -> None:
    assert err.endswith("\n")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def on(monkeypatch, layout: pk.Layout) -> None:
    monkeypatch.setattr(probe, "detect_layout", lambda: layout)


def test_cli_without_af_key_on_linux(monkeypatch, capsys):
    on(monkeypatch, LINUX)
    monkeypatch.setattr(probe.socket, "socket", fake_socket_error(errno.EAFNOSUPPORT))

    code = probe.main([])

    err = capsys.readouterr().err
    assert code == probe.EXIT_NO_PFKEY == 3
    assert err.startswith(
        "pfkey-probe: this kernel has no AF_KEY (PF_KEY v2) socket support; "
    )
    assert "modprobe af_key" in err
    assert_one_line(err)


def test_cli_without_pf_key_on_freebsd(monkeypatch, capsys):
    on(monkeypatch, BSD)
    monkeypatch.setattr(
        probe.socket, "socket", fake_socket_error(errno.EPROTONOSUPPORT)
    )

    code = probe.main([])

    err = capsys.readouterr().err
    assert code == 3
    assert "IPSEC_SUPPORT" in err
    assert_one_line(err)


@pytest.mark.parametrize("number", [errno.EPERM, errno.EACCES])
def test_cli_without_privilege(monkeypatch, capsys, number):
    on(monkeypatch, BSD)
    monkeypatch.setattr(probe.socket, "socket", fake_socket_error(number))

    code = probe.main([])

    err = capsys.readouterr().err
    assert code == probe.EXIT_NO_PRIVILEGE == 4
    assert "root is needed" in err
    assert errno.errorcode[number] in err
    assert_one_line(err)


def test_cli_other_socket_error(monkeypatch, capsys):
    on(monkeypatch, LINUX)
    monkeypatch.setattr(probe.socket, "socket", fake_socket_error(errno.EMFILE))

    code = probe.main([])

    err = capsys.readouterr().err
    assert code == probe.EXIT_FAILURE == 1
    assert "EMFILE" in err
    assert_one_line(err)


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"],
        ["--timeout", "0"],
        ["--timeout", "soon"],
        ["--spi-base", "0x10"],
        ["--layout", "freebsd"],
        ["extra"],
    ],
)
def test_cli_bad_arguments(monkeypatch, capsys, argv):
    monkeypatch.setattr(probe.socket, "socket", fake_socket_error(errno.EPERM))

    code = probe.main(argv)

    err = capsys.readouterr().err
    assert code == probe.EXIT_USAGE == 2
    assert err.startswith("pfkey-probe: bad arguments: ")
    assert_one_line(err)


def test_cli_runs_and_prints_json(monkeypatch, capsys):
    kernel = FakeKernel(policy=no_ipsec_module)
    on(monkeypatch, BSD)
    monkeypatch.setattr(probe.SocketTransport, "open", lambda layout: kernel)

    code = probe.main(["--json", "--spi-base", "0x7e001200"])

    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)
    assert data["verdict"]["code"] == "ipsec-transform-missing"
    assert data["spi_base"] == "0x7e001200"
    assert kernel.sad == {}


def test_cli_runs_and_prints_table(monkeypatch, capsys):
    kernel = FakeKernel(policy=freebsd15)
    on(monkeypatch, BSD)
    monkeypatch.setattr(probe.SocketTransport, "open", lambda layout: kernel)

    code = probe.main(["--timeout", "0.5"])

    out = capsys.readouterr().out
    assert code == 0
    assert "verdict: algorithm" in out


@pytest.mark.parametrize(("platform", "af_key"), [("freebsd15", 27), ("linux", 15)])
def test_layout_follows_the_running_system(platform, af_key):
    assert probe.detect_layout(platform).af_key == af_key


def test_cli_on_an_unsupported_system(monkeypatch, capsys):
    real = probe.detect_layout
    monkeypatch.setattr(probe, "detect_layout", lambda: real("darwin"))

    code = probe.main([])

    err = capsys.readouterr().err
    assert code == probe.EXIT_NO_PFKEY
    assert "'darwin'" in err
    assert_one_line(err)


def test_socket_transport_opens_pf_key_raw_v2(monkeypatch):
    seen = []

    class Recorder:
        def __init__(self, *args):
            seen.append(args)

        def close(self):
            seen.append("closed")

    monkeypatch.setattr(probe.socket, "socket", Recorder)

    probe.SocketTransport.open(BSD).close()

    assert seen == [(27, socket.SOCK_RAW, 2), "closed"]


# Standalone copy, as it would be copied into a jail


@pytest.fixture
def copied_package(tmp_path):
    shutil.copytree(
        PFKEY_DIR, tmp_path / "pfkey", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "where"),
    [
        (["-m", "pfkey.probe", "--help"], "."),
        (["-m", "pfkey", "--help"], "."),
        (["probe.py", "--help"], "pfkey"),
    ],
)
def test_copied_directory_runs_alone(copied_package, argv, where):
    result = subprocess.run(
        [sys.executable, "-E", "-s", *argv],
        cwd=copied_package / where,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "usage: pfkey-probe" in result.stdout
    assert result.stderr == ""


def test_copied_directory_reports_bad_arguments_in_one_line(copied_package):
    result = subprocess.run(
        [sys.executable, "-E", "-s", "probe.py", "--timeout", "-1"],
        cwd=copied_package / "pfkey",
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_line(result.stderr)


def test_old_python_gets_one_line_instead_of_traceback(copied_package, monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 10, 12))

    with pytest.raises(SystemExit) as caught:
        runpy.run_path(str(copied_package / "pfkey" / "probe.py"))

    assert str(caught.value).startswith("pfkey-probe: python 3.11 or later")
