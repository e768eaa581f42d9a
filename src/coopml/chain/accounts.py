"""Accounts as encrypted keystore files (Ethereum "version 3" JSON, scrypt KDF — what geth,
clef, foundry's `cast wallet` and MetaMask exports use), so a node's private key never sits in
plain text in a config file.

    python -m coopml.chain.accounts --keystore ~/.coopml/keys create
    python -m coopml.chain.accounts --keystore ~/.coopml/keys import --key-file - < key.hex
    python -m coopml.chain.accounts --keystore ~/.coopml/keys list

Private keys are read from a file or standard input, never from the command line (argv is
visible to every user in `ps`). Passwords come from an environment variable
(COOPML_KEYSTORE_PASSWORD by default), a password file, or an interactive prompt. Files are
written 0600 in a 0700 directory, atomically.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import is_hex_address, to_checksum_address

from coopml.errors import (
    KeystoreCorrupted,
    KeystoreError,
    KeystoreNotFound,
    WrongPassword,
)
from coopml.paths import write_private

PASSWORD_ENV = "COOPML_KEYSTORE_PASSWORD"
SCRYPT_N = 2**18  # geth's "standard" scrypt cost (~1 s, 256 MiB); tests pass a smaller power of 2


@dataclass(frozen=True)
class KeystoreEntry:
    address: str
    path: Path


class Keystore:
    """A directory of encrypted key files, one per account."""

    def __init__(self, directory: str | Path, scrypt_n: int = SCRYPT_N) -> None:
        self.directory = Path(directory).expanduser()
        if scrypt_n < 2 or scrypt_n & (scrypt_n - 1):
            raise KeystoreError(f"scrypt cost must be a power of two >= 2, got {scrypt_n}")
        self.scrypt_n = scrypt_n

    # ------------------------------------------------------------------ writing

    def create(self, password: str) -> KeystoreEntry:
        """A fresh random key, encrypted with `password`."""
        return self._store(Account.create(), password)

    def import_key(self, private_key: bytes | str, password: str) -> KeystoreEntry:
        """Encrypt an existing key (32 bytes, or hex with or without 0x)."""
        try:
            account = Account.from_key(private_key)
        except Exception as exc:  # noqa: BLE001 - eth-keys raises several types for bad keys
            raise KeystoreError(f"not a valid secp256k1 private key: {type(exc).__name__}") from None
        return self._store(account, password)

    def _store(self, account: LocalAccount, password: str) -> KeystoreEntry:
        if not password:
            raise KeystoreError("refusing to encrypt a key with an empty password")
        existing = self._find_address(account.address)
        if existing is not None:
            raise KeystoreError(f"{account.address} is already in the keystore ({existing})")
        document = Account.encrypt(account.key, password, kdf="scrypt", iterations=self.scrypt_n)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime())
        path = self.directory / f"UTC--{stamp}.{time.time_ns() % 10**9:09d}Z--{account.address[2:].lower()}"
        write_private(path, json.dumps(document), durable=True)     # its temporary name starts with ".": not listed
        return KeystoreEntry(to_checksum_address(account.address), path)

    # ------------------------------------------------------------------ reading

    def list(self) -> list[KeystoreEntry]:
        """Accounts in the directory (address read from each file; unreadable files skipped)."""
        if not self.directory.is_dir():
            return []
        entries = []
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            try:
                address = _document_address(_read_document(path))
            except KeystoreError:
                continue
            if address is not None:
                entries.append(KeystoreEntry(address, path))
        return entries

    def _find_address(self, address: str) -> Path | None:
        want = to_checksum_address(address)
        return next((e.path for e in self.list() if e.address == want), None)

    def path_for(self, account: str | Path) -> Path:
        """The file of an account given as an address or a path."""
        if isinstance(account, str) and is_hex_address(account):
            path = self._find_address(account)
            if path is None:
                raise KeystoreNotFound(f"no keystore file for {to_checksum_address(account)} in {self.directory}")
            return path
        path = Path(account).expanduser()
        if not path.is_absolute() and not path.exists():
            path = self.directory / path
        if not path.is_file():
            raise KeystoreNotFound(f"keystore file {path} does not exist")
        return path

    def unlock(self, account: str | Path, password: str) -> LocalAccount:
        """Decrypt an account's key (address or file path). WrongPassword / KeystoreCorrupted /
        KeystoreNotFound name what went wrong."""
        path = self.path_for(account)
        return unlock_file(path, password)


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KeystoreNotFound(f"keystore file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeystoreCorrupted(f"keystore file {path} is unreadable: {exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeystoreCorrupted(f"keystore file {path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(document, dict) or document.get("version") != 3 or not isinstance(
            document.get("crypto") or document.get("Crypto"), dict):
        raise KeystoreCorrupted(f"keystore file {path} is not a version-3 encrypted key")
    return document


def _document_address(document: dict[str, Any]) -> str | None:
    address = document.get("address")
    if isinstance(address, str) and is_hex_address(address if address.startswith("0x") else "0x" + address):
        return to_checksum_address(address if address.startswith("0x") else "0x" + address)
    return None


def unlock_file(path: str | Path, password: str) -> LocalAccount:
    path = Path(path)
    document = _read_document(path)
    try:
        key = Account.decrypt(document, password)
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise WrongPassword(f"wrong password for keystore file {path}") from None
        raise KeystoreCorrupted(f"keystore file {path} is damaged: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise KeystoreCorrupted(f"keystore file {path} lacks a field or has a wrong one: {exc}") from None
    account: LocalAccount = Account.from_key(key)
    recorded = _document_address(document)
    if recorded is not None and recorded != account.address:
        raise KeystoreCorrupted(f"keystore file {path} says {recorded} but holds the key of {account.address}")
    return account


# ---------------------------------------------------------------------------------- secrets input


def read_password(env: str | None = PASSWORD_ENV, file: str | Path | None = None, prompt: bool = True,
                  confirm: bool = False, stream: TextIO | None = None) -> str:
    """A password from, in order: `file` (first line), the environment variable `env`, or an
    interactive prompt (only on a terminal). Never from argv."""
    if file is not None:
        path = Path(file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            raise KeystoreNotFound(f"password file {path} does not exist") from None
        if not lines or not lines[0]:
            raise KeystoreError(f"password file {path} is empty")
        return lines[0]
    if env and os.environ.get(env):
        return os.environ[env]
    stream = stream or sys.stdin
    if prompt and stream.isatty():
        password = getpass.getpass("keystore password: ")
        if confirm and getpass.getpass("repeat password: ") != password:
            raise KeystoreError("the passwords do not match")
        return password
    raise KeystoreError(f"no password: set {env or 'a password environment variable'}, pass a password file, "
                        "or run on a terminal to be prompted")


def read_private_key(source: str | Path, stream: TextIO | None = None) -> bytes:
    """A hex private key from a file, or from standard input when `source` is "-"."""
    if str(source) == "-":
        text = (stream or sys.stdin).read()
        where = "standard input"
    else:
        path = Path(source).expanduser()
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise KeystoreNotFound(f"key file {path} does not exist") from None
        where = str(path)
    token = text.strip().removeprefix("0x")
    try:
        key = bytes.fromhex(token)
    except ValueError:
        raise KeystoreError(f"{where} does not hold a hex private key") from None
    if len(key) != 32:
        raise KeystoreError(f"{where} holds {len(key)} bytes, a private key has 32")
    return key


# ---------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coopml.chain.accounts", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keystore", required=True, type=Path, help="keystore directory")
    parser.add_argument("--password-file", type=Path, default=None)
    parser.add_argument("--password-env", default=PASSWORD_ENV)
    parser.add_argument("--scrypt-n", type=int, default=SCRYPT_N, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("create", help="new random account")
    imp = sub.add_parser("import", help="encrypt an existing key read from a file or stdin (-)")
    imp.add_argument("--key-file", required=True, help="file holding the hex key, or - for standard input")
    sub.add_parser("list", help="addresses in the keystore")
    args = parser.parse_args(argv)
    store = Keystore(args.keystore, scrypt_n=args.scrypt_n)
    try:
        if args.command == "list":
            for entry in store.list():
                print(f"{entry.address}  {entry.path}")
            return 0
        key = read_private_key(args.key_file) if args.command == "import" else None
        password = read_password(args.password_env, args.password_file, confirm=True)
        entry = store.create(password) if key is None else store.import_key(key, password)
        print(f"{entry.address}  {entry.path}")
        return 0
    except KeystoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
