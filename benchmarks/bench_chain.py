"""Chain benchmark: gas per lifecycle step and in total for 1 initiator + N contributors + a pool of
verifiers (V drawn per model), for N in 3, 30, 100, on the v2 contract and, side by side
("before/after"), on the v1 contract kept as the CoopMLv1 test fixture; and transactions per
second on the embedded py-evm chain, the embedded chain served over JSON-RPC, and anvil.

    .venv/bin/python benchmarks/bench_chain.py            # full run (a few minutes)
    .venv/bin/python benchmarks/bench_chain.py --quick    # N in 3, 10; tx/s on N=3

Gas is a property of the contract, identical on every backend (checked: the N=3 gas figures of
the backends are compared). Speeds are wall-clock on this (shared, 2-core) machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict

from eth_abi import encode as abi_encode
from eth_utils import keccak

from coopml.chain import ETHER, Chain, TaskTerms, Vote, deploy, key_commitment
from coopml.chain.artifacts import load_artifact
from coopml.chain.backends import ErrorDecoder
from coopml.chain.processes import anvil_binary, start_anvil, start_embedded_node

MANIFEST_HASH = keccak(b"bench manifest")
DELIVERY_KEY = b"\x0d" * 32
BOX_KEY = b"\x0b" * 32
WINDOW = 600

# v1 step -> the v2 steps doing the same job (v2 splits the draw out of the announcement and
# the key release into a delivery plus its finalization after the dispute window)
BEFORE_AFTER = [
    ("deploy", ["deploy"]),
    ("publishTask", ["publishTask"]),
    ("registerVerifier", ["registerVerifier"]),
    ("registerContributor", ["registerContributor"]),
    ("announceModel", ["announceModel", "drawVerifiers"]),
    ("commitVote", ["commitVote"]),
    ("revealVote", ["revealVote"]),
    ("finalizeModel", ["finalizeModel"]),
    ("releaseKey", ["deliverKey", "finalizeDelivery"]),
    ("settleVote", ["settleVote"]),
    ("closeTask", ["closeTask"]),
    ("claimDeposits", ["leaveTask"]),
    ("withdraw", ["withdraw"]),
]


def _accounts(chain: Chain, n_contributors: int, pool: int) -> tuple[str, list[str], list[str]]:
    tag = f"{time.time_ns()}"
    initiator = chain.new_account(1_000 * ETHER, seed=f"init-{tag}")
    contributors = [chain.new_account(10 * ETHER, seed=f"c{i}-{tag}") for i in range(n_contributors)]
    verifiers = [chain.new_account(10 * ETHER, seed=f"v{i}-{tag}") for i in range(pool)]
    return initiator, contributors, verifiers


def lifecycle(chain: Chain, n_contributors: int, pool: int, v: int) -> tuple[dict[str, list[int]], int, float]:
    """Run one whole v2 task; returns gas per step, the number of transactions and the seconds."""
    dev = chain.dev_accounts()
    initiator, contributors, verifiers = _accounts(chain, n_contributors, pool)
    gas: dict[str, list[int]] = defaultdict(list)
    txs = 0
    t0 = time.perf_counter()

    def record(step: str, client) -> None:
        nonlocal txs
        gas[step].append(client.last_gas)
        txs += 1

    coop = deploy(chain, dev[0])
    record("deploy", coop)
    terms = TaskTerms(reward_per_model=ETHER // 10, verifier_fee=ETHER // 1000, contributor_deposit=ETHER // 100,
                      verifier_deposit=ETHER // 100, max_models=n_contributors, verifiers_per_model=v,
                      announce_deadline=chain.now() + 10_000, verify_window=WINDOW, reveal_window=WINDOW,
                      delivery_window=WINDOW, dispute_window=WINDOW)
    ini = coop.as_(initiator)
    task_id = ini.publish_task(MANIFEST_HASH, "bafkreimanifest", DELIVERY_KEY, terms)
    record("publishTask", ini)
    for a in verifiers:
        c = coop.as_(a)
        c.register_verifier(task_id, BOX_KEY, terms.verifier_deposit)
        record("registerVerifier", c)
    models = []
    for a in contributors:
        c = coop.as_(a)
        c.register_contributor(task_id, terms.contributor_deposit)
        record("registerContributor", c)
        key = os.urandom(32)
        model_id = c.announce_model(task_id, os.urandom(32), key_commitment(key), "bafybeimodel")
        record("announceModel", c)
        while not coop.draw_ready(model_id):
            chain.mine()
        selected = ini.draw_verifiers(model_id)
        record("drawVerifiers", ini)
        salt = os.urandom(32)
        for s in selected:
            vc = coop.as_(s)
            vc.commit_vote(model_id, Vote.APPROVE, salt)
            record("commitVote", vc)
        for s in selected:
            vc = coop.as_(s)
            vc.reveal_vote(model_id, Vote.APPROVE, salt)
            record("revealVote", vc)
        ini.finalize_model(model_id)
        record("finalizeModel", ini)
        c.deliver_key(model_id, os.urandom(80))  # an X25519 sealed box of K: 32 + 48 bytes
        record("deliverKey", c)
        models.append((model_id, selected))
    chain.increase_time(WINDOW + 1)
    for model_id, selected in models:
        ini.finalize_delivery(model_id)
        record("finalizeDelivery", ini)
        for s in selected:
            ini.settle_vote(model_id, s)
            record("settleVote", ini)
    chain.increase_time(10_001)
    ini.close_task(task_id)
    record("closeTask", ini)
    for a in verifiers:
        c = coop.as_(a)
        c.leave_task(task_id)
        record("leaveTask", c)
    for a in [initiator, *contributors, *verifiers]:
        if coop.owed(a) == 0:  # the initiator's whole escrow was spent
            continue
        c = coop.as_(a)
        c.withdraw()
        record("withdraw", c)
    seconds = time.perf_counter() - t0
    assert coop.contract_balance() == coop.total_burnt() == 0, "benchmark lifecycle left funds in the contract"
    return gas, txs, seconds


def lifecycle_v1(chain: Chain, n_contributors: int, pool: int, v: int) -> dict[str, list[int]]:
    """The same honest task on the v1 contract (the CoopMLv1 test fixture): the "before" column."""
    dev = chain.dev_accounts()
    initiator, contributors, verifiers = _accounts(chain, n_contributors, pool)
    art = load_artifact("CoopMLv1")
    decoder = ErrorDecoder(art["abi"])
    contract, receipt = chain.deploy_contract("CoopMLv1", dev[0])
    gas: dict[str, list[int]] = defaultdict(list)
    gas["deploy"].append(int(receipt["gasUsed"]))

    def tx(step: str, sender: str, fn: str, *args, value: int = 0) -> None:
        r = chain.transact(getattr(contract.functions, fn)(*args), sender, value=value, decoder=decoder,
                           extra_gas=v * v * 3_000)
        gas[step].append(int(r["gasUsed"]))

    reward, fee, c_dep, v_dep = ETHER // 10, ETHER // 1000, ETHER // 100, ETHER // 100
    spec = ("MNIST digit classification", "fused accuracy improves", "table1-c1", ["bafkreidata0"],
            b"\x11" * 32, "bafkreihekey", b"\x22" * 32)
    terms = (reward, fee, c_dep, v_dep, n_contributors, v, chain.now() + 10_000, WINDOW, WINDOW, WINDOW)
    tx("publishTask", initiator, "publishTask", spec, terms, value=n_contributors * (reward + v * fee))
    task_id = contract.functions.taskCount().call()
    for a in verifiers:
        tx("registerVerifier", a, "registerVerifier", task_id, BOX_KEY, value=v_dep)
    for a in contributors:
        tx("registerContributor", a, "registerContributor", task_id, value=c_dep)
        key = os.urandom(32)
        tx("announceModel", a, "announceModel", task_id, "bafybeimodel", os.urandom(32), keccak(key))
        model_id = contract.functions.modelCount().call()
        selected = contract.functions.getSelectedVerifiers(model_id).call()
        salt = os.urandom(32)
        for s in selected:
            commitment = keccak(abi_encode(["uint256", "address", "bool", "bytes32"], [model_id, s, True, salt]))
            tx("commitVote", s, "commitVote", model_id, commitment)
        for s in selected:
            tx("revealVote", s, "revealVote", model_id, True, salt)
        tx("finalizeModel", initiator, "finalizeModel", model_id)
        tx("releaseKey", a, "releaseKey", model_id, key)
        for s in selected:
            tx("settleVote", initiator, "settleVote", model_id, s)
    chain.increase_time(10_001)
    tx("closeTask", initiator, "closeTask", task_id)
    for a in verifiers:
        tx("claimDeposits", a, "claimDeposits", task_id)
    for a in [initiator, *contributors, *verifiers]:
        if contract.functions.owed(a).call():
            tx("withdraw", a, "withdraw")
    assert chain.balance(contract.address) == 0, "v1 benchmark lifecycle left funds in the contract"
    return gas


def transfer_rate(chain: Chain, n: int = 100) -> float:
    """Plain ETH transfers per second from one local key: the chain plus the client's send path,
    without the contract calls and reads of a lifecycle."""
    sender = chain.new_account(10 * ETHER, seed=f"rate-{time.time_ns()}")
    to = chain.dev_accounts()[1]
    t0 = time.perf_counter()
    for _ in range(n):
        chain.send({"to": to, "value": 1, "gas": 21_000}, sender)
    return n / (time.perf_counter() - t0)


def print_gas(results: dict[int, dict[str, list[int]]]) -> None:
    ns = sorted(results)
    steps = list(results[ns[0]])
    print("\nGas per action (mean; [min-max] where it varies) for 1 initiator + N contributors")
    print(f"{'step':<20}" + "".join(f"{'N=' + str(n):>24}" for n in ns))
    for step in steps:
        cells = []
        for n in ns:
            g = results[n][step]
            cell = f"{statistics.mean(g):,.0f}"
            if min(g) != max(g):
                cell += f" [{min(g):,}-{max(g):,}]"
            cells.append(f"{cell:>24}")
        print(f"{step:<20}" + "".join(cells))
    print(f"{'TOTAL':<20}" + "".join(f"{sum(sum(g) for g in results[n].values()):>24,}" for n in ns))
    print(f"{'total / N':<20}" + "".join(
        f"{sum(sum(g) for s, g in results[n].items() if s != 'deploy') / n:>24,.0f}" for n in ns))
    per_action = {s: [statistics.mean(results[n][s]) for n in ns] for s in steps if s != "deploy"}
    worst = max(per_action, key=lambda s: max(per_action[s]) / min(per_action[s]))
    ratio = max(per_action[worst]) / min(per_action[worst])
    print(f"flatness: largest change of a per-action mean across N is {worst} x{ratio:.3f}")


def print_before_after(v1: dict[int, dict[str, list[int]]], v2: dict[int, dict[str, list[int]]]) -> None:
    ns = sorted(v2)
    print("\nBefore/after: mean gas per action, v1 (CoopMLv1 fixture) -> v2, same honest lifecycle")
    print(f"{'v1 step -> v2 step(s)':<44}" + "".join(f"{'N=' + str(n) + ' v1':>13}{'v2':>11}{'x':>7}" for n in ns))
    for old, new in BEFORE_AFTER:
        label = f"{old} -> {' + '.join(new)}" if [old] != new else old
        cells = []
        for n in ns:
            before = statistics.mean(v1[n][old])
            after = sum(statistics.mean(v2[n][s]) for s in new)
            cells.append(f"{before:>13,.0f}{after:>11,.0f}{after / before:>7.2f}")
        print(f"{label:<44}" + "".join(cells))
    totals = []
    for n in ns:
        b = sum(sum(g) for s, g in v1[n].items() if s != "deploy") / n
        a = sum(sum(g) for s, g in v2[n].items() if s != "deploy") / n
        totals.append(f"{b:>13,.0f}{a:>11,.0f}{a / b:>7.2f}")
    print(f"{'all parties, per model (total/N, no deploy)':<44}" + "".join(totals))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N in 3, 10; speed on N=3")
    parser.add_argument("--pool", type=int, default=5, help="registered verifiers (default 5)")
    parser.add_argument("-v", "--verifiers-per-model", type=int, default=3)
    args = parser.parse_args()
    ns = [3, 10] if args.quick else [3, 30, 100]
    speed_n = 3 if args.quick else 30
    have_anvil = anvil_binary() is not None

    gas_by_n: dict[int, dict[str, list[int]]] = {}
    v1_by_n: dict[int, dict[str, list[int]]] = {}
    speed: dict[str, tuple[int, float]] = {}
    anvil = start_anvil(balance_eth=1_000_000) if have_anvil else None
    node = start_embedded_node()
    try:
        chains = {"embedded (in-process)": Chain.embedded(), "embedded node (JSON-RPC)": Chain.rpc(node.url)}
        if anvil:
            chains["anvil (auto-mine)"] = Chain.rpc(anvil.url)
        gas_chain = chains.get("anvil (auto-mine)", chains["embedded (in-process)"])
        for n in ns:
            gas_by_n[n] = lifecycle(gas_chain, n, args.pool, args.verifiers_per_model)[0]
            v1_by_n[n] = lifecycle_v1(gas_chain, n, args.pool, args.verifiers_per_model)
        for name, chain in chains.items():
            gas, txs, secs = lifecycle(chain, speed_n, args.pool, args.verifiers_per_model)
            speed[name] = (txs, secs)
            if name == "embedded (in-process)":
                embedded_gas = gas
        # selection probing, first-time (cold) slots and salts make some steps vary run to run
        # (calldata with a zero byte is cheaper, so salts, keys and timestamps vary too)
        fixed = ["deploy", "registerContributor", "finalizeModel", "closeTask", "finalizeDelivery"]
        same = all(embedded_gas[s][-1] == gas_by_n[speed_n][s][-1] for s in fixed)
        # the machine is shared: alternate backends over 3 rounds and keep each one's best
        transfers = {name: 0.0 for name in chains}
        for _ in range(3):
            for name, chain in chains.items():
                transfers[name] = max(transfers[name], transfer_rate(chain, 50))
    finally:
        node.stop()
        if anvil:
            anvil.stop()

    print_gas(gas_by_n)
    print_before_after(v1_by_n, gas_by_n)
    print(f"deterministic steps cost the same gas on embedded and {'anvil' if have_anvil else 'embedded'}: {same}")
    print(f"\nThroughput, sequential lifecycle of N={speed_n} (send + wait for receipt + reads):")
    base = speed["embedded (in-process)"][0] / speed["embedded (in-process)"][1]
    for name, (txs, secs) in speed.items():
        rate = txs / secs
        print(f"  {name:<28} {txs:>5} tx in {secs:6.1f} s = {rate:6.1f} tx/s  (x{rate / base:.2f} embedded)")
    print("\nPlain ETH transfers from one local key (sign + send + receipt), best of 3 rounds of 50:")
    for name, rate in transfers.items():
        print(f"  {name:<28} {rate:6.1f} tx/s  (x{rate / transfers['embedded (in-process)']:.2f} embedded)")
    if not have_anvil:
        print("  anvil: not installed (npm ci installs @foundry-rs/anvil-linux-amd64)")


if __name__ == "__main__":
    main()
