"""Plans shared by the hostile-participant scenarios (tests/roles/test_roles_adversarial*.py): a
small honest or hostile contributor and verifier (agent classes from coopml.sim.behaviours).

The scenarios are one file each so that `--dist loadfile` spreads them over the workers (each is
a whole task on the embedded EVM, 40-100 s): they share no fixture."""

from __future__ import annotations

from coopml.sim.lifecycle import ContributorPlan, VerifierPlan

B = "coopml.sim.behaviours:"
ALL = list(range(10))


def _c(labels: list[int], agent: str | None = None, **kw: object) -> ContributorPlan:
    return ContributorPlan(labels=labels, n_train=300, epochs=3, agent=f"{B}{agent}" if agent else
                           "coopml.roles.contributor:Contributor", **kw)


def _v(agent: str | None = None) -> VerifierPlan:
    return VerifierPlan(n_verify=300, agent=f"{B}{agent}" if agent else "coopml.roles.verifier:Verifier")
