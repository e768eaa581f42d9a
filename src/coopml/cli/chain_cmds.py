"""Deployment commands in the style of Flower's `flwr` and Foundry's `cast`: a local chain node,
contract deployment, encrypted accounts, task publication and a task's on-chain status.

Each command is a thin layer over coopml.chain / coopml.roles. Secrets: private keys only ever come
from a file or standard input (never argv), passwords from a file, an environment variable or a
prompt; keystore files are written 0600 (coopml.chain.Keystore).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from coopml.cli.common import CliUsageError, friendly
from coopml.errors import CoopmlError

console = Console(soft_wrap=True)
# coopml.chain.accounts' defaults, repeated so that `coopml --help` need not import web3
# (tests/cli/test_cli_errors.py checks they agree)
PASSWORD_ENV = "COOPML_KEYSTORE_PASSWORD"

SCRYPT_N = 2**18
ETHER = 10**18
DEFAULT_KEYSTORE = Path("~/.coopml/keystore")
ZERO_ADDRESS = "0x" + "00" * 20

account_app = typer.Typer(no_args_is_help=True, add_completion=False,
                          help="Encrypted accounts (eth-account keystore files, scrypt, written 0600).")

KeystoreDir = Annotated[Path, typer.Option("--keystore", help="keystore directory")]
PasswordFile = Annotated[Path | None, typer.Option("--password-file", help="file whose first line is the "
                                                   f"password (else ${PASSWORD_ENV}, else a prompt)")]
ScryptCost = Annotated[int, typer.Option("--scrypt-n", hidden=True, help="scrypt cost (tests use a cheap one)")]


def _password(password_file: Path | None, confirm: bool = False) -> str:
    from coopml.chain import read_password
    return read_password(env=PASSWORD_ENV, file=password_file, prompt=True, confirm=confirm)


def _unlock(account: Path, password_file: Path | None) -> Any:
    from coopml.chain import Keystore
    return Keystore(account.expanduser().parent).unlock(account.expanduser(), _password(password_file))


def _chain(rpc: str) -> Any:
    from coopml.chain import Chain
    return Chain.rpc(rpc)


# ------------------------------------------------------------------------------ node

def node(
    port: Annotated[int, typer.Option(min=0, max=65535, help="port on 127.0.0.1 (0: a free one)")] = 8545,
    anvil: Annotated[bool, typer.Option("--anvil", help="run anvil (npm, pinned) instead of the embedded py-evm node")] = False,
    block_time: Annotated[float, typer.Option(min=0.0, help="seconds between blocks (0: one block per transaction)")] = 1.0,
    state: Annotated[Path | None, typer.Option(help="keep the chain in this file across restarts "
                                         "(embedded: SQLite; anvil: its --state JSON)")] = None,
    accounts: Annotated[int, typer.Option(min=1, max=100, help="unlocked, funded dev accounts (dev chains only)")] = 10,
) -> None:
    """Start a local chain node on 127.0.0.1 and print its RPC URL; Ctrl-C stops it."""
    from coopml.chain.processes import free_port
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    if not anvil:
        import socket

        from coopml.chain.node import serve
        with socket.socket() as probe:      # a taken port is a clear error, not a traceback
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                raise CliUsageError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
        console.print(f"rpc: {url}", highlight=False)
        sys.stdout.flush()
        serve(port, block_time=block_time, state=state, accounts=accounts)
        return
    from coopml.chain.processes import start_anvil
    proc = start_anvil(port=port, block_time=block_time or None, accounts=accounts, state=state)
    console.print(f"rpc: {proc.url}  (anvil, pid {proc.pid})", highlight=False)
    sys.stdout.flush()
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            if proc._proc.poll() is not None:
                raise CoopmlError(f"anvil exited with code {proc._proc.returncode}: {proc.output()[-1000:]}")
    finally:
        proc.stop()


# ------------------------------------------------------------------------------ deploy

def deploy(
    rpc: Annotated[str, typer.Option("--rpc", help="JSON-RPC URL of the chain node")],
    account: Annotated[Path, typer.Option("--account", help="keystore file of the (funded) deploying account")],
    password_file: PasswordFile = None,
    out: Annotated[Path, typer.Option("--out", help="where to write the deployment record")] = Path("deployment.json"),
) -> None:
    """Deploy the CoopML contract; prints its address and deployment block and writes them as JSON."""
    from coopml.chain import deploy as deploy_contract
    signer = _unlock(account, password_file)
    chain = _chain(rpc)
    sender = chain.add_key(signer.key)
    coop = deploy_contract(chain, sender)
    record = {"rpc": rpc, "chain_id": int(chain.w3.eth.chain_id), "contract": coop.address,
              "deploy_block": coop.deploy_block, "deployer": sender}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    console.print(f"contract: {coop.address}\ndeploy block: {coop.deploy_block}\nwrote {out}", highlight=False)


# ------------------------------------------------------------------------------ accounts

@account_app.command("new")
@friendly
def account_new(keystore: KeystoreDir = DEFAULT_KEYSTORE, password_file: PasswordFile = None,
                scrypt_n: ScryptCost = SCRYPT_N) -> None:
    """Create a random account, encrypted with a password."""
    from coopml.chain import Keystore
    entry = Keystore(keystore, scrypt_n=scrypt_n).create(_password(password_file, confirm=True))
    console.print(f"{entry.address}  {entry.path}", highlight=False)


@account_app.command("import")
@friendly
def account_import(key_file: Annotated[str, typer.Option("--key-file", help="file holding the hex private key, "
                                                "or - for standard input (never pass a key as an argument)")],
                   keystore: KeystoreDir = DEFAULT_KEYSTORE, password_file: PasswordFile = None,
                   scrypt_n: ScryptCost = SCRYPT_N) -> None:
    """Encrypt an existing private key into the keystore."""
    from coopml.chain import Keystore, read_private_key
    key = read_private_key(key_file)
    entry = Keystore(keystore, scrypt_n=scrypt_n).import_key(key, _password(password_file, confirm=True))
    console.print(f"{entry.address}  {entry.path}", highlight=False)


@account_app.command("list")
@friendly
def account_list(keystore: KeystoreDir = DEFAULT_KEYSTORE,
                 rpc: Annotated[str | None, typer.Option("--rpc", help="also show balances from this node")] = None) -> None:
    """Accounts in the keystore (addresses are read without decrypting anything)."""
    from coopml.chain import Keystore
    entries = Keystore(keystore).list()
    chain = _chain(rpc) if rpc else None
    if not entries:
        console.print(f"no accounts in {keystore}", highlight=False)
    for e in entries:      # one line per account, `cast wallet list` style: easy to grep and script
        balance = f"  {chain.balance(e.address) / ETHER:.4f} ETH" if chain else ""
        console.print(f"{e.address}  {e.path}{balance}", highlight=False)


@account_app.command("fund")
@friendly
def account_fund(
    to: Annotated[list[str], typer.Option("--to", help="recipient address or keystore file (repeat for several)")],
    eth: Annotated[float, typer.Option("--eth", min=0.0, help="amount in ETH")],
    rpc: Annotated[str, typer.Option("--rpc", help="JSON-RPC URL of the chain node")],
    sender: Annotated[Path | None, typer.Option("--from", help="keystore file of the paying account")] = None,
    from_dev: Annotated[bool, typer.Option("--from-dev", help="pay from the node's first unlocked dev account "
                                  "(anvil / `coopml node` only)")] = False,
    password_file: PasswordFile = None,
) -> None:
    """Send ETH to accounts (dev chains: from the node's dev account)."""
    from eth_utils import is_hex_address, to_checksum_address
    if (sender is None) == (not from_dev):
        raise CliUsageError("give exactly one of --from KEYSTORE or --from-dev")
    addresses = [to_checksum_address(t if is_hex_address(t) else _keystore_address(Path(t))) for t in to]
    chain = _chain(rpc)
    if from_dev:
        dev = chain.dev_accounts()
        if not dev:
            raise CliUsageError(f"the node at {rpc} has no unlocked dev accounts; use --from KEYSTORE")
        payer = dev[0]
    else:
        assert sender is not None
        payer = chain.add_key(_unlock(sender, password_file).key)
    for address in addresses:
        chain.fund(address, round(eth * ETHER), sender=payer)
        console.print(f"sent {eth:g} ETH from {payer} to {address}; balance {chain.balance(address) / ETHER:.4f} ETH",
                      highlight=False)


def _keystore_address(path: Path) -> str:
    from coopml.chain.accounts import _document_address, _read_document
    address = _document_address(_read_document(path.expanduser()))
    if address is None:
        raise CliUsageError(f"{path}: keystore file has no address field; give the address")
    return address


# ------------------------------------------------------------------------------ publish

def publish(
    config: Annotated[Path, typer.Option("--config", help="the initiator's JSON config (InitiatorConfig)")],
    manifest: Annotated[str | None, typer.Option("--manifest", help="task manifest file (overrides the config's)")] = None,
) -> None:
    """Publish the task of an initiator config (escrowing the reward) and print its id.

    Then run `coopml initiator --config ...` with the same config: it carries on with this task."""
    from coopml.roles.config import InitiatorConfig, load_config
    from coopml.roles.initiator import Initiator
    from coopml.roles.log import EventLog, Role
    from coopml.roles.runner import open_node
    from coopml.task import TaskManifest, builtin_names

    cfg = load_config(InitiatorConfig, config, manifest=manifest)
    assert isinstance(cfg, InitiatorConfig)
    if cfg.manifest not in builtin_names():      # a bad manifest fails here, before any key is unlocked
        if not Path(cfg.manifest).is_file():
            raise CliUsageError(f"{config}: manifest {cfg.manifest!r} is neither a file nor a built-in manifest "
                                f"({', '.join(builtin_names())})")
        TaskManifest.from_file(cfg.manifest)
    node_ = open_node(cfg)
    agent = Initiator(cfg, client=node_.client, store=node_.store, state=node_.state,
                      log=EventLog(Role.INITIATOR, "initiator", lambda rec: None))
    try:
        task_id = agent.task_id
        if task_id is not None:
            console.print(f"task {task_id} was already published from {cfg.workdir}", highlight=False)
        else:
            task_id = agent.publish()
            console.print(f"published task {task_id}", highlight=False)
        console.print(f"task id: {task_id}", highlight=False)
    finally:
        agent.jobs.shutdown()
        node_.close()


def manifests() -> None:
    """The task manifests shipped with coopml (the paper's tasks), usable by name in an initiator config."""
    from coopml.task import builtin_manifest, builtin_names
    table = Table("name", "task", "input", "verification")
    for name in builtin_names():
        m = builtin_manifest(name)
        table.add_row(name, m.name, m.input.describe(), m.verification.mode)
    console.print(table)


# ------------------------------------------------------------------------------ status

def _target(rpc: str | None, contract: str | None, from_block: int | None, deployment: Path | None,
            config: Path | None) -> tuple[str, str, int]:
    base: dict[str, Any] = {}
    for path in (deployment, config):
        if path is None:
            continue
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CliUsageError(f"{path}: no such file") from None
        except json.JSONDecodeError as exc:
            raise CliUsageError(f"{path}: not valid JSON ({exc})") from None
        base.update({"rpc": data.get("rpc", data.get("chain")), "contract": data.get("contract"),
                     "from_block": data.get("deploy_block", data.get("from_block", 0))})
    rpc = rpc or base.get("rpc")
    contract = contract or base.get("contract")
    if not rpc or not contract:
        raise CliUsageError("say which chain and contract: --rpc and --contract, or --deployment / --config")
    return rpc, contract, from_block if from_block is not None else int(base.get("from_block") or 0)


def status(
    task: Annotated[int, typer.Option("--task", min=1, help="task id")],
    rpc: Annotated[str | None, typer.Option("--rpc", help="JSON-RPC URL")] = None,
    contract: Annotated[str | None, typer.Option("--contract", help="CoopML contract address")] = None,
    from_block: Annotated[int | None, typer.Option("--from-block", min=0, help="first block to read events from")] = None,
    deployment: Annotated[Path | None, typer.Option("--deployment", help="deployment JSON (`coopml deploy`)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="any node config (chain and contract taken from it)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """A task's models, votes, payments and deadlines, read from the chain (no account needed)."""
    from coopml.chain import TaskClient, verify_deployment
    from coopml.roles.status import task_status
    rpc, contract, start = _target(rpc, contract, from_block, deployment, config)
    chain = _chain(rpc)
    verify_deployment(chain, contract)
    client = TaskClient(chain, contract, ZERO_ADDRESS, deploy_block=start)
    st = task_status(client, task, from_block=start)
    if as_json:
        print(json.dumps(st.model_dump(mode="json"), indent=1))
        return
    print_status(st)


def print_status(st: Any) -> None:
    """The rich view of a roles.status.TaskStatus (fits 80 columns: addresses fold, statuses never do)."""
    t = st.task
    console.print(f"[bold]task {t.task_id}[/] by {t.initiator}: {'closed' if t.closed else 'open'}, "
                  f"{t.models_bought}/{t.max_models} model(s) bought, reward {t.reward_eth:g} ETH/model, "
                  f"{t.verifiers_per_model} verifier(s)/model; announce until {_time(t.announce_deadline)} "
                  f"(chain time now {_time(st.chain_time)})", highlight=False)
    models = Table(Column("model", no_wrap=True), Column("contributor", overflow="fold"),
                   Column("status", no_wrap=True, min_width=13), Column("a/r/x", no_wrap=True),
                   Column("votes", overflow="fold"), "verify by", "reveal by", "dispute until",
                   title="models (a/r/x: approve/reject/abstain; times UTC)")
    for m in st.models:
        votes = ", ".join(f"{_short(v)} {vote.lower()}" for v, vote in m.votes.items()) or "-"
        models.add_row(str(m.model_id), _short(m.contributor), m.status, f"{m.approve}/{m.reject}/{m.abstain}", votes,
                       _time(m.verify_deadline, True), _time(m.reveal_deadline, True), _time(m.dispute_deadline, True))
    console.print(models if st.models else "no models announced yet")
    if st.payments:
        pay = Table(Column("account", overflow="fold"), "what", Column("ETH", no_wrap=True, justify="right"),
                    title="payments and burns")
        for p in st.payments:
            pay.add_row(p.account, p.kind, f"{p.wei / ETHER:.4f}")
        console.print(pay)


def _short(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}"


def _time(ts: int, clock_only: bool = False) -> str:
    import datetime as dt
    fmt = "%H:%M:%S" if clock_only else "%Y-%m-%d %H:%M:%S UTC"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime(fmt) if ts else "-"


def mount(app: typer.Typer) -> None:
    for fn, name in ((node, "node"), (deploy, "deploy"), (publish, "publish"), (status, "status"),
                     (manifests, "manifests")):
        app.command(name)(friendly(fn))
    app.add_typer(account_app, name="account")

