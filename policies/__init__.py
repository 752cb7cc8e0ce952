"""Policy documents, their loader, the evaluation engine and hot reload.

Governance users write YAML (see ``docs/policies.md``); ``PolicySet.load``
turns it into frozen rules, ``Engine`` evaluates them and ``PolicyWatcher``
(``policies.reload``) swaps in new versions without a restart.
"""

from policies.engine import Engine, Outcome
from policies.loader import PolicyLoadError, PolicyProblem
from policies.policy_set import BoundCheck, PolicySet, Rule

__all__ = ["BoundCheck", "Engine", "Outcome", "PolicyLoadError", "PolicyProblem", "PolicySet", "Rule"]
