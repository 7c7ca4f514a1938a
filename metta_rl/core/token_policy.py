"""mettagrid's own TokenPolicyNet as a feed-forward policy (``policy.kind=token``), for comparison.

TokenPolicyNet (``mettagrid.policy.token_encoder``) embeds each token's x, y and feature id,
weights the sum by the token's normalized value, pools over tokens (sum / sqrt(count)) and
runs an MLP of 192 units into its action and value heads. It is used as mettagrid ships it,
its dropout (0.1, active in training mode) included; only its action head is resized to this
env's action heads when they differ from its default action set, and token positions that are
padding in every row of a batch are skipped (they add nothing to its masked sum).
"""

from __future__ import annotations

import gymnasium
import torch

from metta_rl.config import ConfigError
from metta_rl.core.policy import LSTMState, Policy, action_nvec
from metta_rl.core.token_grid import TokenLayout, used_tokens


class TokenPolicy(Policy):
    def __init__(self, *, obs_space: gymnasium.spaces.Box, action_space: gymnasium.Space, layout: TokenLayout) -> None:
        super().__init__()
        if not (isinstance(obs_space, gymnasium.spaces.Box) and len(obs_space.shape) == 2 and obs_space.shape[1] == 3):
            raise ConfigError(f"policy.kind=token needs MettaGrid token observations [tokens, 3]; this env's are {obs_space}")
        # mettagrid's training extra (pufferlib) is imported only when this policy is built.
        import pufferlib.pytorch
        from mettagrid.config.action_config import ActionsConfig
        from mettagrid.config.id_map import ObservationFeatureSpec
        from mettagrid.policy.token_encoder import TokenPolicyNet

        self.obs_shape = tuple(obs_space.shape)
        self.nvec = action_nvec(action_space)
        self.is_recurrent = False
        self.lstm = None
        features = [ObservationFeatureSpec(id=fid, name=name, normalization=norm) for fid, name, norm in layout.features]
        self.net = TokenPolicyNet(features, ActionsConfig())
        outputs = sum(self.nvec)
        if self.net.num_actions != outputs:
            self.net.action_head = pufferlib.pytorch.layer_init(torch.nn.Linear(self.net.hidden_size, outputs))
            self.net.num_actions = outputs

    def forward_step(
        self, obs: torch.Tensor, state: LSTMState | None = None, first: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        # Positions that are padding in every row add nothing to its pooled sum: skip them.
        logits, values = self.net.forward_eval(obs[:, : max(used_tokens(obs), 1)])
        return logits, values.squeeze(-1), None
