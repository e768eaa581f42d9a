"""Link and chain presets: what one emulated host's network and the chain look like.

Delays are per link and per direction: a packet from one node to another crosses two links (the
sender's and the receiver's), so the node-to-node one-way delay is twice `delay_ms` and the ping
round trip four times. The `pi` preset targets 10 Mbit/s and 20 ms one way between any two
nodes (Raspberry Pi boards on a congested/remote network); `lan` a switched 100 Mbit/s LAN with no
relay in the path (a relay hop costs more than a LAN's latency: ~0.7 ms each under load here);
`ci` keeps the relay and shaping in the path but is fast. Measured figures are in docs/testbed.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LinkProfile(BaseModel):
    """Shaping of one host's link (applied in both directions)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_mbit: float | None = Field(None, gt=0, description="tbf rate limit; None leaves the link unshaped")
    delay_ms: float = Field(0.0, ge=0, le=2000, description="one-way delay added by the relay, per direction")
    queue_ms: float = Field(50.0, gt=0, description="tbf queue size, in ms of traffic at the rate")

    def describe(self) -> str:
        rate = f"{self.rate_mbit:g} Mbit/s" if self.rate_mbit else "unshaped"
        return f"{rate}, +{self.delay_ms:g} ms per link each way"


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    link: LinkProfile
    block_time: float = Field(gt=0, description="anvil --block-time (s); the paper's PoA chain used 15 s")
    data: Literal["tiny", "reduced", "full"] = "reduced"
    fedavg_rounds: int = Field(3, ge=1)
    fedavg_local_epochs: int = Field(2, ge=1)


PRESETS: dict[str, Preset] = {
    "pi": Preset(name="pi", description="Raspberry-Pi-like boards: 10 Mbit/s, 20 ms one way node to node, 15 s PoA blocks",
                 link=LinkProfile(rate_mbit=10, delay_ms=10, queue_ms=50), block_time=15, data="full",
                 fedavg_rounds=5, fedavg_local_epochs=6),
    "lan": Preset(name="lan", description="switched LAN: 100 Mbit/s, no added delay (no relay), 2 s blocks",
                  link=LinkProfile(rate_mbit=100, delay_ms=0, queue_ms=20), block_time=2, data="full",
                  fedavg_rounds=5, fedavg_local_epochs=6),
    "ci": Preset(name="ci", description="CI: 50 Mbit/s, 2 ms one way node to node, 1 s blocks, tiny data",
                 link=LinkProfile(rate_mbit=50, delay_ms=1, queue_ms=20), block_time=1, data="tiny",
                 fedavg_rounds=2, fedavg_local_epochs=1),
}


def get_preset(name: str) -> Preset:
    from coopml.testbed.errors import TestbedError
    try:
        return PRESETS[name]
    except KeyError:
        raise TestbedError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
