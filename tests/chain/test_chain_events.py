"""EventCursor: decoded events in order, persisted position, resume after restart without
missing or repeating events, and crash-safe drain."""

from __future__ import annotations

import json
import time

import pytest

from coopml.chain import ChainError, EventCursor


def test_poll_returns_each_event_once_and_resumes_from_file(world, tmp_path):
    state = tmp_path / "cursor.json"
    coop = world.coop
    cursor = EventCursor(world.chain, coop.address, from_block=world.deploy_block, state_path=state)
    task_id = world.publish(n_verifiers=3, n_contributors=1)
    first = cursor.poll()
    names = [e.name for e in first]
    assert names[0] == "TaskPublished" and first[0].args["taskId"] == task_id
    assert names.count("VerifierRegistered") == 3 and names.count("ContributorRegistered") == 1
    assert [e.position for e in first] == sorted(e.position for e in first)
    assert cursor.poll() == []  # nothing new

    model_id = world.announce(task_id, world.contributors[0])
    # the agent "restarts": a new cursor from the same file sees only what came after
    restarted = EventCursor(world.chain, coop.address, from_block=world.deploy_block, state_path=state)
    second = restarted.poll()
    assert [e.name for e in second] == ["ModelAnnounced", "VerifierSelected", "VerifierSelected", "VerifierSelected",
                                        "VerifiersDrawn"]
    assert second[1].block_number > second[0].block_number  # the draw comes in a later block
    assert {e.args["verifier"] for e in second[1:4]} == set(coop.selected_verifiers(model_id))
    assert list(second[4].args["verifiers"]) == coop.selected_verifiers(model_id)
    assert not {e.position for e in first} & {e.position for e in second}
    saved = json.loads(state.read_text())
    assert saved["last"] == list(second[-1].position)


def test_drain_saves_after_each_event_so_a_crash_redelivers_only_the_current_one(world, tmp_path):
    state = tmp_path / "cursor.json"
    world.publish(n_verifiers=3, n_contributors=0)
    handled = []

    def crash_on_third(ev):
        if len(handled) == 2:
            raise RuntimeError("agent crashed")
        handled.append(ev.position)

    cursor = EventCursor(world.chain, world.coop.address, from_block=world.deploy_block, state_path=state, names={"TaskPublished", "VerifierRegistered"})
    with pytest.raises(RuntimeError):
        cursor.drain(crash_on_third)
    assert len(handled) == 2
    restarted = EventCursor(world.chain, world.coop.address, from_block=world.deploy_block, state_path=state, names={"TaskPublished", "VerifierRegistered"})
    rest = []
    assert restarted.drain(lambda ev: rest.append(ev.position)) == 2
    assert handled + rest == sorted(set(handled + rest))  # in order, no duplicate, none missing
    assert len(handled + rest) == 4


def test_cursor_file_of_another_contract_is_refused(world, tmp_path):
    state = tmp_path / "cursor.json"
    EventCursor(world.chain, world.coop.address, from_block=world.deploy_block, state_path=state).poll()
    with pytest.raises(ChainError, match="belongs to contract"):
        EventCursor(world.chain, world.outsider, state_path=state)


def test_wait_for_activity_sleeps_until_there_are_events(world):
    import threading
    import time as _time

    cursor = EventCursor(world.chain, world.coop.address, from_block=world.deploy_block)
    cursor.poll()
    world.chain.mine()  # a block with nothing for the cursor is skipped, not reported
    t0 = _time.monotonic()
    assert cursor.wait_for_activity(0.4, min_interval=0.05) is False
    assert _time.monotonic() - t0 >= 0.4
    assert cursor.next_block == world.chain.block_number() + 1
    only_models = EventCursor(world.chain, world.coop.address, from_block=cursor.next_block, names={"ModelAnnounced"})
    timer = threading.Timer(0.3, lambda: world.publish(n_verifiers=1, n_contributors=0))
    timer.start()
    try:
        assert cursor.wait_for_activity(30, min_interval=0.05) is True
    finally:
        timer.join()
    assert "TaskPublished" in [e.name for e in cursor.poll()]
    assert only_models.wait_for_activity(0.2, min_interval=0.05) is False  # events, but not its names


def _woken(wait, wake, after: float = 0.2) -> float:
    """Seconds `wait()` took to return True while a timer sets `wake` after `after` seconds (a wait
    that polls instead of waking takes its whole interval)."""
    import threading
    import time

    timer = threading.Timer(after, wake.set)
    t0 = time.monotonic()
    timer.start()
    try:
        assert wait() is True
    finally:
        timer.join()
    return time.monotonic() - t0


def test_wait_for_activity_ends_when_woken(world):
    """An agent asleep until the chain moves must wake at once when its own computation (training,
    a refit, a posted message) ends, not at its next poll."""
    import threading

    cursor = EventCursor(world.chain, world.coop.address, from_block=world.deploy_block)
    cursor.poll()
    wake = threading.Event()
    assert _woken(lambda: cursor.wait_for_activity(30, min_interval=5, max_interval=5, wake=wake), wake) < 3
    assert not wake.is_set()                                      # woken, not polled; and cleared
    assert cursor.wait_for_activity(0.2, min_interval=0.05, wake=wake) is False
    # a block the caller waits for ends the wait although it carries nothing for this cursor
    target = world.chain.block_number() + 1
    timer = threading.Timer(0.2, world.chain.mine)
    timer.start()
    try:
        assert cursor.wait_for_activity(30, min_interval=0.05, max_interval=0.1, until_block=target) is True
    finally:
        timer.join()
    assert world.chain.block_number() >= target


def test_confirmations_hold_events_back_until_deep_enough(world):
    cursor = EventCursor(world.chain, world.coop.address, from_block=world.deploy_block, confirmations=2)
    world.publish(n_verifiers=0, n_contributors=0)
    assert cursor.poll() == []
    assert cursor.wait_for_activity(0.1, min_interval=0.05) is False
    world.chain.mine()
    assert cursor.poll() == []
    world.chain.mine()
    assert [e.name for e in cursor.poll()] == ["TaskPublished"]


def test_increase_time_after_a_long_pause_never_travels_backwards():
    """eth-tester's pending block carries the wall-clock time of its creation: after a pause longer
    than the step, `now() + seconds` lies before it and eth-tester refused ("Space time continuum
    distortion") — the chain invariant machine failed that way on a slow step."""
    import time

    from coopml.chain import Chain

    chain = Chain.embedded()
    chain.mine()
    time.sleep(5)        # the next block still carries the time before the pause, the pending one after it
    chain.mine()
    before = chain.now()
    chain.increase_time(1)
    assert chain.now() >= before + 1


def test_wait_for_block_returns_on_any_new_block_and_leaves_its_events_to_drain(world):
    """The agents' idle wait: one block-number read per wake-up, True once a block the cursor has
    not read is mined (events or not: the agent's deadlines move with chain time), the events left
    for `drain` to read once; a `wake` ends it at once; a timeout returns False."""
    import threading

    cursor = EventCursor(world.chain, world.coop.address, from_block=world.deploy_block)
    cursor.poll()
    assert cursor.wait_for_block(0.2, min_interval=0.05) is False
    world.chain.mine()                                # an empty block: still a new block
    assert cursor.wait_for_block(5, min_interval=0.05) is True
    assert cursor.drain(lambda ev: None) == 0 and cursor.wait_for_block(0.1, min_interval=0.05) is False
    world.publish(n_verifiers=0, n_contributors=0)
    assert cursor.wait_for_block(5, min_interval=0.05) is True
    seen: list[str] = []
    assert cursor.drain(lambda ev: seen.append(ev.name)) >= 1 and "TaskPublished" in seen
    wake = threading.Event()
    assert _woken(lambda: cursor.wait_for_block(30, min_interval=5, max_interval=5, wake=wake), wake) < 3
    assert not wake.is_set()


def test_pushed_heads_replace_polling_on_anvil(anvil_node):
    """On a node with websockets (anvil) an idle cursor waits on pushed headers: no request while
    it waits, none to learn the head, and no `eth_getLogs` for a block whose logs bloom proves the
    contract logged nothing in it; a block with the contract's event is read."""
    import threading

    from coopml.chain import Chain, deploy
    from coopml.chain.heads import bloom_may_contain

    chain = Chain.rpc(anvil_node.url)
    coop = deploy(chain, chain.dev_accounts()[0])
    methods: list[str] = []
    make_request = chain.w3.manager._make_request

    def counted(method, params):
        methods.append(str(method))
        return make_request(method, params)
    chain.w3.manager._make_request = counted  # type: ignore[method-assign]
    cursor = EventCursor(chain, coop.address, from_block=coop.deploy_block)
    cursor.poll()
    assert cursor.wait_for_block(0.3) is False          # starts the subscription; nothing new
    heads = chain.heads()
    assert heads is not None and heads.alive
    other = Chain.rpc(anvil_node.url)                    # another party's client mines and sends

    def pushed() -> None:                                 # the node's push reached the subscription
        target = other.block_number()
        deadline = time.monotonic() + 10
        while (heads.latest is None or heads.latest[0] < target) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert heads.latest is not None and heads.latest[0] >= target and heads.fresh()

    other.mine()
    pushed()
    methods.clear()
    assert cursor.wait_for_block(10) is True
    assert cursor.drain(lambda ev: None) == 0
    assert cursor.wait_for_block(0.3) is False           # waiting for the next push
    assert methods == [], methods                         # an empty block and the wait cost nothing
    bloom = heads.bloom(heads.latest[0])
    assert bloom is not None and not bloom_may_contain(bloom, bytes.fromhex(coop.address[2:]))
    from coopml.chain import TaskClient, TaskTerms
    terms = TaskTerms(reward_per_model=10**18, verifier_fee=10**16, contributor_deposit=10**17,
                      verifier_deposit=5 * 10**16, max_models=1, verifiers_per_model=3,
                      announce_deadline=other.now() + 3600, verify_window=600, reveal_window=600,
                      delivery_window=600, dispute_window=600)
    TaskClient(other, coop.address, other.dev_accounts()[3]).publish_task(b"\x01" * 32, "bafy-x", b"\x02" * 32, terms)
    pushed()
    assert cursor.wait_for_block(10) is True
    seen: list[str] = []
    assert cursor.drain(lambda ev: seen.append(ev.name)) == 1 and seen == ["TaskPublished"]
    assert "eth_getLogs" in methods and "eth_blockNumber" not in methods and "eth_getBlockByNumber" not in methods
    assert cursor.head_time is not None and abs(cursor.head_time - other.now()) <= 2
    wake = threading.Event()
    threading.Timer(0.2, wake.set).start()
    assert cursor.wait_for_block(30, wake=wake) is True   # a job's end still wakes it
    heads.close()


def test_a_node_without_websockets_is_polled():
    """The embedded chain (and any node with no websocket at its address) has no pushed heads:
    `Chain.heads()` is None and the cursor polls."""
    from coopml.chain import Chain
    from coopml.chain.heads import HeadSubscription, websocket_url

    assert Chain.embedded().heads() is None
    assert websocket_url("http://127.0.0.1:8545") == "ws://127.0.0.1:8545"
    assert websocket_url("https://node.example/rpc") == "wss://node.example/rpc"
    assert websocket_url("ipc:///tmp/x") is None
    refused = HeadSubscription("ws://127.0.0.1:9", open_timeout=1)   # nothing listens there
    assert refused.wait_ready(5) is False and refused.unsupported


def test_a_subscription_that_stops_pushing_is_not_trusted():
    """A node that keeps the websocket open but stops pushing heads must not leave a node blind:
    after a few typical gaps (at least 5 s) without a push the cursor reads the head over HTTP."""
    import time as _time

    from coopml.chain.heads import HeadSubscription

    heads = HeadSubscription("ws://127.0.0.1:9", open_timeout=1)    # its thread gives up at once
    heads.wait_ready(5)
    heads.alive = True                                             # as if connected
    for n in range(1, 4):
        heads._push({"number": hex(n), "timestamp": hex(1000 + n), "logsBloom": "0x" + "00" * 256})
    assert heads.fresh() and heads.latest == (3, 1003)
    heads.latest_at = _time.monotonic() - 6
    assert not heads.fresh()
    heads._push({"number": hex(2), "timestamp": hex(1002)})         # an older head changes nothing
    assert heads.latest == (3, 1003) and not heads.fresh()


def test_a_websocket_on_its_own_port_is_used_when_configured(anvil_node):
    """geth serves its websocket on another port than HTTP (8546 vs 8545): deriving it from the
    HTTP URL finds nothing there, and the node would be polled forever. `ws_url` (the agents'
    `chain_ws`) points the subscription at it; "none" turns it off. Here HTTP goes through a
    forwarding proxy that speaks no websocket, and the websocket is anvil's own."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import requests

    from coopml.chain import Chain
    from coopml.chain.heads import websocket_url
    from coopml.roles.config import NodeConfig

    class Forward(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            reply = requests.post(anvil_node.url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
            self.send_response(reply.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.content)))
            self.end_headers()
            self.wfile.write(reply.content)

        def log_message(self, *_args) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    http_only = f"http://127.0.0.1:{proxy.server_address[1]}"
    try:
        assert Chain.rpc(http_only).heads() is None                   # derived ws URL: the proxy, no websocket
        configured = Chain.rpc(http_only, ws_url=websocket_url(anvil_node.url))
        heads = configured.heads()
        assert heads is not None and heads.alive
        target = configured.block_number() + 1
        configured.mine()
        deadline = time.monotonic() + 10
        while (heads.latest is None or heads.latest[0] < target) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert heads.latest is not None and heads.latest[0] >= target   # pushed over anvil's websocket
        heads.close()
        assert Chain.rpc(anvil_node.url, ws_url="none").heads() is None
    finally:
        proxy.shutdown()
    base = {"chain": http_only, "contract": "0x" + "11" * 20, "store": "/tmp/s", "workdir": "/tmp/w",
            "account": {"keystore": "/tmp/k"}}
    assert NodeConfig.model_validate({**base, "chain_ws": "ws://127.0.0.1:8546"}).chain_ws == "ws://127.0.0.1:8546"
    with pytest.raises(ValueError, match="not a websocket URL"):
        NodeConfig.model_validate({**base, "chain_ws": "http://127.0.0.1:8546"})
