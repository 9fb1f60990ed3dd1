"""`quota shards` against real center processes on etcd: a resize from the implicit one-group map hands half
the slots to a second group, whose process then serves them; the plan and every flip are audited. On an etcd
secured as production runs it (TLS with client certificates, RBAC), the commands take the settings `quota
center serve` takes, and a typo in them stops the command with one line saying what to change."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quota_admin.client import AdminClient, ServedElsewhere
from quota_center.v1 import quota_center_pb2 as pb
from quota_common.shards import ShardMap, rebalance
from quota_common.transport import Transport
from quota_testing.certs import write_server_pair
from quota_testing.launch import ServerProcess, center_process, run_quota
from quota_testing.servers import EtcdUser, RunningServer, ServerTls, etcd_server
from quota_testing.support import create_when_leading, promotion
from quota_testing.tls import DevTls, write_dev_tls
from tests.e2e.test_backend_security import refused_by_etcd

pytestmark = pytest.mark.e2e


@pytest.fixture
def etcd() -> Iterator[RunningServer]:
    with etcd_server() as server:
        yield server


def _shards(tmp_path: Path, *args: str) -> str:
    done = run_quota("shards", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_resize_hands_slots_to_a_new_group_which_then_serves_them(etcd: RunningServer, tmp_path: Path) -> None:
    store = f"etcd://{etcd.address}/test/{uuid.uuid4().hex}"
    centers: list[ServerProcess] = []
    try:
        for group in ("default", "g1"):
            (tmp_path / group).mkdir()
            centers.append(center_process(tmp_path / group, "--group", group, store=store).start())
        default, g1 = centers
        client = AdminClient([f"default={default.address}", f"g1={g1.address}"], 10.0, Transport())
        planned_map = rebalance(ShardMap.single(), ["default", "g1"])
        moving = next(p for p in (f"promo-{i}" for i in range(50)) if planned_map.owner_of(p) == "g1")
        request = pb.CreatePromotionRequest(promotion=promotion(moving, regions=("eu",)))
        create_when_leading(client, request)
        assert "version 0, 1024 slots\n  default: 1024 slots" in _shards(tmp_path, "show", "--store", store)

        planned = _shards(tmp_path, "resize", "--store", store, "--groups", "default,g1", "--yes")
        assert "512 of 1024 slots change hands: 512 default -> g1" in planned
        refused = run_quota("shards", "resize", "--store", store, "--groups", "default,g1,g2", "--yes", cwd=tmp_path)
        assert refused.returncode != 0
        assert "still being handed over" in refused.stderr

        deadline = time.monotonic() + 60
        while "being handed over" in (shown := _shards(tmp_path, "show", "--store", store)):
            assert time.monotonic() < deadline, shown
            time.sleep(0.5)
        assert "default: 512 slots\n  g1: 512 slots" in shown
        trail = _shards(tmp_path, "audit", "--store", store).splitlines()
        assert "operator" in trail[0]
        assert trail[0].endswith(": 512 slots planned to move")
        assert len(trail) == 1 + 512
        assert all(line.endswith("center group default: 1 slots handed over (default -> g1)") for line in trail[1:])
        # The promotion moved with its slot: g1 serves it, the default group names g1.
        got = client.call(lambda admin: admin.GetPromotion, pb.GetPromotionRequest(promotion_id=moving))
        assert got.id == moving
        only_default = AdminClient([default.address], 10.0, Transport())
        with pytest.raises(ServedElsewhere, match="served by center group 'g1'"):
            only_default.call(lambda admin: admin.GetPromotion, pb.GetPromotionRequest(promotion_id=moving))
    finally:
        for center in centers:
            center.stop()


OPERATOR = "quota-operator"


@dataclass(frozen=True)
class SecuredEtcd:
    server: RunningServer
    dev: DevTls
    """The development set: its CA signed etcd's certificate, and carol's is the operator's."""
    password_file: Path

    def store(self, scheme: str = "etcds") -> str:
        return f"{scheme}://{self.server.address}/quota"

    def login(self) -> tuple[str, ...]:
        return ("--etcd-user", OPERATOR, "--etcd-password-file", str(self.password_file))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredEtcd]:
    """TLS only, client certificates of the development CA required, RBAC on: the operator may use /quota/."""
    directory = tmp_path_factory.mktemp("secured")
    dev = write_dev_tls(directory, ("eu",))
    cert, key = write_server_pair(directory, "etcd", datetime.now(UTC))
    password = secrets.token_urlsafe(16)
    (directory / "operator.password").write_text(f"{password}\n")
    with etcd_server(
        tls=ServerTls(cert, key, dev.files("center").ca), users=[EtcdUser(OPERATOR, password, "/quota/")]
    ) as server:
        yield SecuredEtcd(server, dev, directory / "operator.password")


def test_the_shard_commands_reach_a_secured_etcd_as_the_center_does(secured: SecuredEtcd) -> None:
    carol = secured.dev.files("operator-carol")
    certificate = ("--etcd-ca", str(carol.ca), "--etcd-cert", str(carol.cert), "--etcd-key", str(carol.key))
    flags = ("--store", secured.store(), *certificate, *secured.login())
    cwd = secured.dev.directory

    assert "version 0, 1024 slots" in _shards(cwd, "show", *flags)
    assert "512 of 1024 slots change hands" in _shards(cwd, "resize", *flags, "--groups", "default,g1", "--yes")
    # The same settings from the environment, the certificate from the --tls-* files, as a center's would be.
    environment = {"QUOTA_STORE": secured.store(), "QUOTA_ETCD_USER": OPERATOR}
    environment |= {"QUOTA_ETCD_PASSWORD_FILE": str(secured.password_file)}
    environment |= {"QUOTA_TLS_CERT": str(carol.cert), "QUOTA_TLS_KEY": str(carol.key), "QUOTA_TLS_CA": str(carol.ca)}
    shown = run_quota("shards", "show", cwd=cwd, env=environment)
    assert shown.returncode == 0, shown.stderr
    assert "version 1, 1024 slots" in shown.stdout
    assert "being handed over: 512 default -> g1" in shown.stdout
    trail = run_quota("shards", "audit", cwd=cwd, env=environment)
    assert trail.stdout.endswith(": 512 slots planned to move\n"), trail.stderr


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("CA file misspelt", "--etcd-ca nowhere.pem: cannot read it (No such file or directory)"),
        ("key missing", "--etcd-cert and --etcd-key go together; --etcd-key is missing"),
        ("CA that did not sign etcd", "presented a certificate this process does not trust"),
        ("no client certificate", "give --etcd-cert and --etcd-key"),
        ("plaintext URL", "if it serves TLS only, use etcds://"),
        ("wrong password", f"refused user {OPERATOR}: etcdserver: authentication failed"),
        ("no user", "give --etcd-user and --etcd-password-file"),
    ],
)
def test_a_typo_in_the_etcd_settings_stops_a_shard_command_with_one_line(
    secured: SecuredEtcd, tmp_path: Path, case: str, named: str
) -> None:
    carol = secured.dev.files("operator-carol")
    pair = ("--etcd-cert", str(carol.cert), "--etcd-key", str(carol.key))
    ca, login, tls_store = ("--etcd-ca", str(carol.ca)), secured.login(), ("--store", secured.store())
    wrong_password = tmp_path / "wrong.password"
    wrong_password.write_text("not-it\n")
    given: dict[str, tuple[str, ...]] = {
        "CA file misspelt": (*tls_store, "--etcd-ca", "nowhere.pem", *pair, *login),
        "key missing": (*tls_store, *ca, "--etcd-cert", str(carol.cert), *login),
        "CA that did not sign etcd": (*tls_store, "--etcd-ca", str(carol.cert), *pair, *login),
        "no client certificate": (*tls_store, *ca, *login),
        "plaintext URL": ("--store", secured.store("etcd"), *login),
        "wrong password": (
            *tls_store,
            *ca,
            *pair,
            "--etcd-user",
            OPERATOR,
            "--etcd-password-file",
            str(wrong_password),
        ),
        "no user": (*tls_store, *ca, *pair),
    }

    line = refused_by_etcd("shards", "show", *given[case], cwd=tmp_path)

    assert named in line
