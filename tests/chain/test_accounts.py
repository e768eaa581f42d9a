"""Encrypted keystore accounts: round trip, wrong password, 0600 files, corrupted or missing
files named as such, keys read from stdin/file (never argv)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys

import pytest
from eth_account import Account

from coopml.chain.accounts import Keystore, read_password, read_private_key, unlock_file
from coopml.errors import (
    KeystoreCorrupted,
    KeystoreError,
    KeystoreNotFound,
    WrongPassword,
)

FAST_N = 2**4  # scrypt cost for tests; the default is 2**18


@pytest.fixture
def store(tmp_path):
    return Keystore(tmp_path / "keys", scrypt_n=FAST_N)


def test_create_import_list_unlock_round_trip(store):
    created = store.create("correct horse")
    key = Account.create().key
    imported = store.import_key(key.hex(), "battery staple")
    assert {e.address for e in store.list()} == {created.address, imported.address}
    assert store.unlock(imported.address, "battery staple").key == key
    assert store.unlock(created.path, "correct horse").address == created.address
    document = json.loads(imported.path.read_text())
    assert document["version"] == 3 and document["crypto"]["kdf"] == "scrypt"
    assert key.hex() not in imported.path.read_text()
    with pytest.raises(KeystoreError, match="already in the keystore"):
        store.import_key(key, "another")


def test_files_are_owner_only(store):
    entry = store.create("pw")
    assert stat.S_IMODE(os.stat(entry.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    assert not [p for p in store.directory.iterdir() if p.name.startswith(".tmp-")]


def test_wrong_password_corrupted_and_missing_files_are_named(store):
    entry = store.create("right")
    with pytest.raises(WrongPassword, match="wrong password"):
        store.unlock(entry.address, "wrong")
    with pytest.raises(KeystoreNotFound):
        store.unlock("0x" + "12" * 20, "right")
    with pytest.raises(KeystoreNotFound):
        unlock_file(store.directory / "nope.json", "right")
    entry.path.write_text(entry.path.read_text()[:-40])  # truncated
    with pytest.raises(KeystoreCorrupted, match="not JSON"):
        store.unlock(entry.path, "right")
    other = store.create("pw")
    document = json.loads(other.path.read_text())
    document["crypto"]["ciphertext"] = "00" * 32  # edited: the MAC no longer matches
    other.path.write_text(json.dumps(document))
    with pytest.raises(WrongPassword):  # indistinguishable from a wrong password by design (MAC)
        store.unlock(other.path, "pw")
    del document["crypto"]["kdfparams"]
    other.path.write_text(json.dumps(document))
    with pytest.raises(KeystoreCorrupted):
        store.unlock(other.path, "pw")
    other.path.write_text(json.dumps({"version": 1}))
    with pytest.raises(KeystoreCorrupted, match="version-3"):
        store.unlock(other.path, "pw")


def test_secrets_come_from_files_stdin_or_env_never_argv(tmp_path, monkeypatch):
    key = Account.create().key
    assert read_private_key("-", stream=io.StringIO("0x" + key.hex() + "\n")) == key
    key_file = tmp_path / "key.hex"
    key_file.write_text(key.hex())
    assert read_private_key(key_file) == key
    with pytest.raises(KeystoreError, match="32"):
        read_private_key("-", stream=io.StringIO("abcd"))
    pw_file = tmp_path / "pw"
    pw_file.write_text("from-file\n")
    monkeypatch.setenv("COOPML_KEYSTORE_PASSWORD", "from-env")
    assert read_password(file=pw_file) == "from-file"
    assert read_password() == "from-env"
    monkeypatch.delenv("COOPML_KEYSTORE_PASSWORD")
    with pytest.raises(KeystoreError, match="no password"):
        read_password(stream=io.StringIO(""))


def test_cli_imports_a_key_from_stdin(tmp_path):
    key = Account.create()
    env = {**os.environ, "COOPML_KEYSTORE_PASSWORD": "cli-pw"}
    keys = tmp_path / "k"
    out = subprocess.run([sys.executable, "-m", "coopml.chain.accounts", "--keystore", str(keys), "--scrypt-n", "16",
                          "import", "--key-file", "-"], input=key.key.hex(), check=False, capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == key.address
    listed = subprocess.run([sys.executable, "-m", "coopml.chain.accounts", "--keystore", str(keys), "list"],
                            check=False, capture_output=True, text=True, timeout=120)
    assert key.address in listed.stdout
    assert Keystore(keys).unlock(key.address, "cli-pw").key == key.key
