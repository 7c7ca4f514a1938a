"""``make_policy``: the one place a policy is built from its config (train, bench, evaluate)."""

from __future__ import annotations

import gymnasium

from metta_rl.config import ConfigError, PolicyConfig
from metta_rl.core.policy import ActorCritic, Policy
from metta_rl.core.token_grid import TokenLayout


def resolve_kind(config: PolicyConfig, env_kind: str) -> str:
    """``policy.kind`` with ``auto`` resolved: the MettaGrid policy for MettaGrid envs, else the MLP."""
    if config.kind == "auto":
        return "mettagrid" if env_kind == "mettagrid" else "mlp"
    return config.kind


def make_policy(
    *,
    obs_space: gymnasium.Space,
    action_space: gymnasium.Space,
    config: PolicyConfig,
    token_layout: TokenLayout | None,
    env_kind: str,
) -> Policy:
    """The policy ``config`` asks for; ``token_layout`` is the env's (None: no token observations)."""
    kind = resolve_kind(config, env_kind)
    if kind == "mlp":
        return ActorCritic(obs_space=obs_space, action_space=action_space, config=config)
    if token_layout is None:
        raise ConfigError(
            f"policy.kind={config.kind!r} is invalid for this env ({env_kind}): it reads MettaGrid token "
            "observations, which this env does not have (use policy.kind=mlp)"
        )
    if kind == "mettagrid":
        from metta_rl.core.mettagrid_policy import MettaGridPolicy

        return MettaGridPolicy(obs_space=obs_space, action_space=action_space, config=config, layout=token_layout)
    from metta_rl.core.token_policy import TokenPolicy

    return TokenPolicy(obs_space=obs_space, action_space=action_space, layout=token_layout)
