"""Chain benchmark: gas per lifecycle step and in total for 1 initiator + N contributors + a pool of
verifiers (V drawn per model), for N in 3, 30, 100; and transactions per second on the embedded
py-evm chain, the embedded chain served over JSON-RPC, and anvil.

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

from coopml.chain import ETHER, Chain, TaskSpec, TaskTerms, deploy, key_commitment
from coopml.chain.processes import anvil_binary, start_anvil, start_embedded_node

SPEC = TaskSpec("MNIST digit classification", "fused accuracy improves", "table1-c1",
                ("bafkreidata0",), b"\x11" * 32, "bafkreihekey", b"\x22" * 32)


def lifecycle(chain: Chain, n_contributors: int, pool: int, v: int) -> tuple[dict[str, list[int]], int, float]:
    """Run one whole task; returns gas per step, the number of transactions and the seconds taken."""
    dev = chain.dev_accounts()
    tag = f"{time.time_ns()}"
    initiator = chain.new_account(1_000 * ETHER, seed=f"init-{tag}")
    contributors = [chain.new_account(10 * ETHER, seed=f"c{i}-{tag}") for i in range(n_contributors)]
    verifiers = [chain.new_account(10 * ETHER, seed=f"v{i}-{tag}") for i in range(pool)]
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
                      announce_deadline=chain.now() + 10_000, commit_window=600, reveal_window=600,
                      release_window=600)
    ini = coop.as_(initiator)
    task_id = ini.publish_task(SPEC, terms)
    record("publishTask", ini)
    for a in verifiers:
        c = coop.as_(a)
        c.register_verifier(task_id, terms.verifier_deposit)
        record("registerVerifier", c)
    for a in contributors:
        c = coop.as_(a)
        c.register_contributor(task_id, terms.contributor_deposit)
        record("registerContributor", c)
        key = os.urandom(32)
        model_id = c.announce_model(task_id, "bafybeimodel", os.urandom(32), key_commitment(key))
        record("announceModel", c)
        selected = coop.selected_verifiers(model_id)
        salt = os.urandom(32)
        for s in selected:
            vc = coop.as_(s)
            vc.commit_vote(model_id, True, salt)
            record("commitVote", vc)
        for s in selected:
            vc = coop.as_(s)
            vc.reveal_vote(model_id, True, salt)
            record("revealVote", vc)
        ini.finalize_model(model_id)
        record("finalizeModel", ini)
        c.release_key(model_id, key)
        record("releaseKey", c)
        for s in selected:
            ini.settle_vote(model_id, s)
            record("settleVote", ini)
    chain.increase_time(10_001)
    ini.close_task(task_id)
    record("closeTask", ini)
    for a in verifiers:
        c = coop.as_(a)
        c.claim_deposits(task_id)
        record("claimDeposits", c)
    for a in [initiator, *contributors, *verifiers]:
        if coop.owed(a) == 0:  # the initiator's whole escrow was spent
            continue
        c = coop.as_(a)
        c.withdraw()
        record("withdraw", c)
    seconds = time.perf_counter() - t0
    assert coop.contract_balance() == 0, "benchmark lifecycle left funds in the contract"
    return gas, txs, seconds


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
        for name, chain in chains.items():
            gas, txs, secs = lifecycle(chain, speed_n, args.pool, args.verifiers_per_model)
            speed[name] = (txs, secs)
            if name == "embedded (in-process)":
                embedded_gas = gas
        # selection probing, first-time (cold) slots and salts make some steps vary run to run
        # (calldata with a zero byte is cheaper, so salts, keys and timestamps vary too)
        fixed = ["deploy", "registerContributor", "finalizeModel", "closeTask"]
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
