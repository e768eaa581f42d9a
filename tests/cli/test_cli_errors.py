"""Bad input to the deployment commands: one clear line naming the cause, exit code 2, no traceback,
and no secret in the output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coopml.cli import chain_cmds
from coopml.cli.main import app

runner = CliRunner()
PASSWORD = "s3cret-pass-phrase"


def run(*args: str, input: str | None = None):
    r = runner.invoke(app, list(args), input=input)
    assert "Traceback" not in r.output
    assert PASSWORD not in r.output
    return r


def fail(*args: str, input: str | None = None, expect: str) -> str:
    r = run(*args, input=input)
    assert r.exit_code == 2, r.output
    assert expect in r.output, r.output
    return r.output


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path, Path]:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    r = run("account", "new", "--keystore", str(tmp_path / "keys"), "--password-file", str(pw), "--scrypt-n", "2")
    assert r.exit_code == 0, r.output
    _address, path = r.output.split()
    return pw, Path(path), tmp_path


@pytest.fixture(scope="module")
def chain_node():
    from coopml.chain import Chain, deploy
    from coopml.chain.processes import start_embedded_node
    with start_embedded_node() as node:
        chain = Chain.rpc(node.url)
        coop = deploy(chain, chain.dev_accounts()[0])
        yield node.url, coop.address, coop.deploy_block


def test_defaults_repeated_in_the_cli_match_the_library():
    from coopml.chain import ETHER
    from coopml.chain.accounts import PASSWORD_ENV, SCRYPT_N
    assert (chain_cmds.PASSWORD_ENV, chain_cmds.SCRYPT_N, chain_cmds.ETHER) == (PASSWORD_ENV, SCRYPT_N, ETHER)


def test_account_files_are_0600_and_import_reads_the_key_from_stdin(keys):
    pw, path, tmp = keys
    assert path.stat().st_mode & 0o777 == 0o600
    key = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
    r = run("account", "import", "--keystore", str(tmp / "keys"), "--password-file", str(pw), "--scrypt-n", "2",
            "--key-file", "-", input=key + "\n")
    assert r.exit_code == 0 and key not in r.output
    listed = run("account", "list", "--keystore", str(tmp / "keys")).output
    assert "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23" in listed and path.name in listed
    fail("account", "import", "--keystore", str(tmp / "keys"), "--password-file", str(pw), "--key-file", "-",
         input=key + "\n", expect="already in the keystore")
    fail("account", "import", "--keystore", str(tmp / "keys"), "--password-file", str(pw), "--key-file", "-",
         input="zz\n", expect="does not hold a hex private key")


def test_missing_keystore_and_password_file(tmp_path):
    fail("deploy", "--rpc", "http://127.0.0.1:9", "--account", str(tmp_path / "nope.json"), "--password-file",
         str(tmp_path / "pw"), expect="password file")
    (tmp_path / "pw").write_text(PASSWORD)
    fail("deploy", "--rpc", "http://127.0.0.1:9", "--account", str(tmp_path / "nope.json"), "--password-file",
         str(tmp_path / "pw"), expect="nope.json does not exist")
    fail("account", "new", "--keystore", str(tmp_path / "k"), "--password-file", str(tmp_path / "missing"),
         expect="password file")


def test_wrong_password_and_corrupt_keystore(keys):
    pw, path, tmp = keys
    bad = tmp / "badpw"
    bad.write_text("not the password")
    fail("deploy", "--rpc", "http://127.0.0.1:9", "--account", str(path), "--password-file", str(bad),
         expect="wrong password")
    broken = tmp / "broken.json"
    broken.write_text("{not json")
    fail("deploy", "--rpc", "http://127.0.0.1:9", "--account", str(broken), "--password-file", str(pw),
         expect="not JSON")


def test_unreachable_node(keys):
    pw, path, _ = keys
    fail("deploy", "--rpc", "http://127.0.0.1:9", "--account", str(path), "--password-file", str(pw),
         expect="no JSON-RPC node answers at http://127.0.0.1:9")


def _initiator_config(tmp: Path, path: Path, pw: Path, manifest: str, contract: str, rpc: str) -> Path:
    x = tmp / "d.npz"
    import numpy as np
    np.savez(x, x=np.zeros((4, 3), np.float32), y=np.array([0, 1, 0, 1]))
    from coopml.data import DatasetRef
    cfg = {"chain": rpc, "contract": contract, "store": str(tmp / "store"), "workdir": str(tmp / "ini"),
           "account": {"keystore": str(path), "password_file": str(pw)}, "manifest": manifest,
           "data": DatasetRef.pin("npz", x).model_dump(mode="json")}
    out = tmp / "initiator.json"
    out.write_text(json.dumps(cfg))
    return out


def test_bad_manifest_is_refused_before_anything_is_unlocked(keys):
    pw, path, tmp = keys
    manifest = tmp / "manifest.json"
    manifest.write_text(json.dumps({"format": "coopml-task", "version": 1, "name": "x",
                                    "input": {"shape": [3], "dtype": "float32", "classes": ["a"]}}))
    cfg = _initiator_config(tmp, path, pw, str(manifest), "0x" + "11" * 20, "http://127.0.0.1:9")
    out = fail("publish", "--config", str(cfg), expect=str(manifest))
    assert "classes" in out
    manifest.write_text("{")
    fail("publish", "--config", str(cfg), expect="not JSON")
    cfg2 = _initiator_config(tmp, path, pw, str(tmp / "absent.json"), "0x" + "11" * 20, "http://127.0.0.1:9")
    fail("publish", "--config", str(cfg2), expect="neither a file nor a built-in manifest")
    raw = json.loads(cfg.read_text())
    raw["key"] = "0x" + "ab" * 32
    cfg.write_text(json.dumps(raw))
    fail("publish", "--config", str(cfg), expect="raw private keys are not accepted")


def test_wrong_contract_address_is_a_clear_error(keys, chain_node):
    pw, path, tmp = keys
    rpc, contract, _ = chain_node
    empty = "0x" + "22" * 20
    fail("status", "--task", "1", "--rpc", rpc, "--contract", empty, expect=f"no contract at {empty}")
    cfg = _initiator_config(tmp, path, pw, "mnist-case-study-2", empty, rpc)
    fail("publish", "--config", str(cfg), expect="no contract at")
    fail("status", "--task", "7", "--rpc", rpc, "--contract", contract, expect="UnknownTask")
    fail("status", "--task", "1", expect="--rpc and --contract")


def test_fund_needs_exactly_one_payer(keys, chain_node):
    _, path, _ = keys
    rpc, _, _ = chain_node
    fail("account", "fund", "--rpc", rpc, "--to", str(path), "--eth", "1", expect="exactly one of --from")
    r = run("account", "fund", "--rpc", rpc, "--to", str(path), "--eth", "1.5", "--from-dev")
    assert r.exit_code == 0 and "balance 1.5000 ETH" in r.output, r.output


def test_store_put_get_roundtrip_and_errors(tmp_path):
    f = tmp_path / "hello.txt"
    f.write_bytes(b"hello coopml\n")
    r = run("store", "put", str(f), "--store", str(tmp_path / "store"))
    assert r.exit_code == 0
    cid = r.output.strip()
    assert cid == "QmbaB9HNApzDFj8ZSmuRw1SeJdZE1x1CaajdANtjsbJXHS" or cid.startswith("Qm")
    out = tmp_path / "back.txt"
    assert run("store", "get", cid, "--store", str(tmp_path / "store"), "--out", str(out)).exit_code == 0
    assert out.read_bytes() == f.read_bytes()
    fail("store", "put", str(tmp_path / "nope"), "--store", str(tmp_path / "store"), expect="no such file")
    r = run("store", "get", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "--store", str(tmp_path / "store"))
    assert r.exit_code == 2


def test_predict_refuses_what_is_not_an_export(tmp_path):
    fail("predict", "--model", str(tmp_path / "m.safetensors"), str(tmp_path), expect="give the .onnx file")
    fail("predict", "--model", str(tmp_path / "m.onnx"), str(tmp_path), expect="no such file")
    junk = tmp_path / "j.onnx"
    junk.write_bytes(b"\x00garbage")
    fail("predict", "--model", str(junk), str(tmp_path), expect="not an ONNX file")


def test_node_on_a_taken_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        fail("node", "--port", str(s.getsockname()[1]), expect="cannot listen on 127.0.0.1:")


def test_status_table_keeps_statuses_whole_at_80_columns(capsys):
    from rich.console import Console

    from coopml.roles.status import ModelSummary, Payment, TaskStatus, TaskSummary
    a = "0x" + "ab" * 20
    st = TaskStatus(chain_time=1_800_000_000, task=TaskSummary(
        task_id=3, initiator=a, closed=False, models_bought=1, max_models=2, verifiers_per_model=1, reward_eth=1.0,
        announce_deadline=1_800_000_900), models=[ModelSummary(
            model_id=7, contributor=a, status="AWAITING_DRAW", approve=0, reject=1, abstain=0, votes={a: "REJECT"},
            cid="Qm", verify_deadline=1_800_000_100, reveal_deadline=1_800_000_110, delivery_deadline=0,
            dispute_deadline=0)], payments=[Payment(account=a, kind="burnt: model_rejected", wei=10**17)])
    old = chain_cmds.console
    chain_cmds.console = Console(width=80, soft_wrap=True)
    try:
        chain_cmds.print_status(st)
    finally:
        chain_cmds.console = old
    out = capsys.readouterr().out
    assert "AWAITING_DRAW" in out and "0/1/0" in out and "burnt: model_rejected" in out and "0.1000" in out
    assert max(len(line) for line in out.splitlines() if line.startswith(("┃", "│", "┏"))) <= 80
