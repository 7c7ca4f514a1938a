"""The token scatter: MettaGrid tokens [B, N, 3] -> a channels-per-feature grid and a global vector.

Hand-built observations check cells, channels and scaled values; a per-token Python reference
checks random observations; mettagrid's own arena declaration checks which features get a
channel."""

from __future__ import annotations

import math

import pytest
import torch

from metta_rl.core.token_grid import OCCUPIED, TokenLayout, TokenScatter, plan_channels, used_tokens

EMPTY = [255, 255, 255]
FEATURES = (
    (0, "agent:group", 10.0),
    (1, "episode_completion_pct", 255.0),
    (2, "last_action", 10.0),
    (3, "last_reward", 100.0),
    (4, "goal", 100.0),
    (6, "tag", 10.0),
    (11, "agent_id", 255.0),
    (12, "inv:heart", 256.0),
    (13, "inv:heart:p1", 256.0),
    (14, "protocol_input:heart", 100.0),
    (20, "my_value", 50.0),  # an unknown kind of feature: grid and global
    (21, "score", 256.0),  # a named game value (global_obs.obs): an amount with a digit,
    (22, "score:p1", 256.0),  # and of unknown kind
)
LAYOUT = TokenLayout(height=13, width=13, features=FEATURES)


def obs(*rows: list[list[int]], tokens: int = 12) -> torch.Tensor:
    """``[len(rows), tokens, 3]`` uint8, each row padded with empty tokens."""
    out = torch.full((len(rows), tokens, 3), 255, dtype=torch.uint8)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row, dtype=torch.uint8)
    return out


@pytest.fixture(scope="module")
def scatter() -> TokenScatter:
    return TokenScatter(LAYOUT)


def ch(scatter: TokenScatter, name: str) -> int:
    return scatter.plan.channels.index(name)


def slot(scatter: TokenScatter, name: str) -> int:
    return scatter.plan.globals.index(name)


def test_plan_keeps_features_that_can_appear_and_folds_digits():
    plan = plan_channels(LAYOUT)
    # amounts (inventories) last: they are one slice to compress
    assert plan.channels == (OCCUPIED, "agent:group", "tag", "agent_id", "my_value", "inv:heart", "score")
    assert plan.first_amount_channel == 5
    assert plan.globals == ("episode_completion_pct", "last_action", "last_reward", "my_value", "score")
    assert plan.first_amount_global == 4
    assert plan.grid_channel[13] == plan.grid_channel[12]  # inv:heart:p1 adds to inv:heart
    assert 4 not in plan.scale and 14 not in plan.scale  # goal, protocol_input: never emitted


def test_tokens_land_in_their_cell_and_channel_scaled(scatter):
    grid, glob = scatter(obs([
        [0xFE, 2, 3],        # last_action 3 (global)
        [0x66, 6, 1],        # tag 1 at the agent's cell (6, 6)
        [0x66, 11, 51],      # agent_id 51
        [0x2C, 12, 44],      # inv:heart 44 at row 2, col 12
        [0x2C, 13, 1],       #   + digit p1 = 1: 44 + 256 hearts
        [0x13, 12, 1],       # one heart at row 1, col 3
        [0xC0, 0, 5],        # agent:group 5 at row 12, col 0
    ]))
    assert grid.shape == (1, 7, 13, 13) and glob.shape == (1, 5)
    expected = torch.zeros(7, 13, 13)
    expected[ch(scatter, "tag"), 6, 6] = 0.1
    expected[ch(scatter, "agent_id"), 6, 6] = 51 / 255
    expected[ch(scatter, "inv:heart"), 2, 12] = math.log(1 + 300)  # an amount: log(1 + count)
    expected[ch(scatter, "inv:heart"), 1, 3] = math.log(2)
    expected[ch(scatter, "agent:group"), 12, 0] = 0.5
    for r, c in [(6, 6), (2, 12), (1, 3), (12, 0)]:
        expected[0, r, c] = 1.0
    assert torch.allclose(grid[0], expected)
    assert torch.allclose(glob[0], torch.tensor([0.0, 0.3, 0.0, 0.0, 0.0]))


def test_globals_go_to_the_vector_only_and_unknown_kinds_to_both(scatter):
    grid, glob = scatter(obs([[0xFE, 1, 51], [0xFE, 3, 7], [0xFE, 20, 25], [0x00, 20, 10], [0xFE, 21, 3], [0xFE, 22, 1]]))
    assert glob[0].tolist() == pytest.approx([0.2, 0.0, 0.07, 0.5, math.log(1 + 259)])
    # my_value as a global fills its slot, at cell (0, 0) its channel; nothing else is on the grid
    assert grid[0, ch(scatter, "my_value")].sum() == pytest.approx(0.2) and grid[0, ch(scatter, "my_value"), 0, 0] == pytest.approx(0.2)
    assert grid[0].sum() == pytest.approx(1.2)  # + occupied at (0, 0)


def test_empty_unknown_dropped_and_out_of_window_tokens_are_ignored(scatter):
    grid, glob = scatter(obs([
        EMPTY,
        [0x33, 200, 9],   # feature id not in the layout
        [0x44, 4, 9],     # goal: declared, dropped
        [0x55, 14, 9],    # protocol_input: declared, dropped
        [0xD0, 6, 9],     # row 13: outside the 13x13 window
        [0x0D, 6, 9],     # col 13
        [0xFE, 6, 9],     # tag as a global token: tag is a cell feature
    ]))
    occupied = grid[0, 0]
    assert occupied[3, 3] == 1 and occupied[4, 4] == 1 and occupied[5, 5] == 1 and occupied.sum() == 3
    assert grid[0, 1:].abs().sum() == 0 and glob.abs().sum() == 0


def test_all_padding_gives_zeros(scatter):
    grid, glob = scatter(obs([], []))
    assert grid.shape == (2, 7, 13, 13) and glob.shape == (2, 5)
    assert grid.abs().sum() == 0 and glob.abs().sum() == 0
    assert used_tokens(obs([], [])) == 0


def test_duplicate_features_at_a_cell_add_up(scatter):
    # Documented: tokens of one channel at one cell sum (two tags 1 and 3 -> 0.4).
    grid, _ = scatter(obs([[0x12, 6, 1], [0x12, 6, 3]]))
    assert grid[0, ch(scatter, "tag"), 1, 2] == pytest.approx(0.4)
    assert grid[0, 0, 1, 2] == 1.0  # occupied stays 1


def test_rows_are_independent_and_the_grid_is_channels_last(scatter):
    grid, glob = scatter(obs([[0x11, 6, 5]], [], [[0xFE, 2, 4], [0x22, 0, 10]]))
    assert grid[0].sum() == pytest.approx(1.5) and grid[1].sum() == 0 and grid[2].sum() == pytest.approx(2.0)
    assert glob[:, slot(scatter, "last_action")].tolist() == pytest.approx([0.0, 0.0, 0.4])
    assert grid.is_contiguous(memory_format=torch.channels_last)


def reference(layout: TokenLayout, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token at a time, straight from the plan."""
    plan = plan_channels(layout)
    grid = torch.zeros(tokens.shape[0], len(plan.channels), layout.height, layout.width, dtype=torch.float64)
    glob = torch.zeros(tokens.shape[0], len(plan.globals), dtype=torch.float64)
    for b, row in enumerate(tokens.tolist()):
        for loc, fid, value in row:
            r, c = loc >> 4, loc & 15
            if loc == 0xFE:
                if fid in plan.global_slot:
                    glob[b, plan.global_slot[fid]] += value * plan.scale[fid]
            elif r < layout.height and c < layout.width:
                grid[b, 0, r, c] = 1.0
                if fid == plan.tag_feature:
                    if value < plan.num_tags:
                        grid[b, plan.first_tag_channel + value, r, c] += 1.0
                elif fid in plan.grid_channel:
                    grid[b, plan.grid_channel[fid], r, c] += value * plan.scale[fid]
    grid[:, plan.first_amount_channel :] = grid[:, plan.first_amount_channel :].log1p()
    glob[:, plan.first_amount_global :] = glob[:, plan.first_amount_global :].log1p()
    return grid.float(), glob.float()


def test_random_tokens_match_a_per_token_reference(scatter):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (16, 40, 3), dtype=torch.uint8, generator=g)
    tokens[..., 1] = torch.tensor([f[0] for f in FEATURES] + [200])[torch.randint(0, len(FEATURES) + 1, (16, 40), generator=g)].to(torch.uint8)
    tokens[:, ::5, 0] = 0xFE
    tokens[:, 30:] = 255
    tokens[3, 10:] = 255
    # Row 5 has a hole and reaches furthest: padding is skipped by position, not by count.
    tokens[5, 30:35] = torch.tensor([0x12, 6, 20], dtype=torch.uint8)
    tokens[5, 5:10] = 255
    grid, glob = scatter(tokens)
    ref_grid, ref_glob = reference(LAYOUT, tokens)
    assert torch.allclose(grid, ref_grid) and torch.allclose(glob, ref_glob)


TAGGED = TokenLayout(13, 13, FEATURES, tags=("type:agent", "type:wall", "type:mine"))


def test_with_tag_names_each_tag_is_a_channel_of_its_own():
    scatter = TokenScatter(TAGGED)
    assert scatter.plan.channels == (
        OCCUPIED, "agent:group", "tag:type:agent", "tag:type:wall", "tag:type:mine", "agent_id", "my_value",
        "inv:heart", "score",
    )
    assert scatter.plan.first_amount_channel == 7
    grid, glob = scatter(obs([
        [0x66, 6, 0],   # the agent's own cell: tag 0 (type:agent), a value that would scale to 0
        [0x12, 6, 1],   # a wall
        [0x34, 6, 1],   # an object with two tags: wall and mine
        [0x34, 6, 2],
        [0x45, 6, 7],   # a tag id past the names: ignored (the cell is still occupied)
        [0xFE, 6, 2],   # a tag as a global token: ignored
        [0x34, 12, 3],  # inv:heart 3 with the mine
    ]))
    expected = torch.zeros(9, 13, 13)
    expected[ch(scatter, "tag:type:agent"), 6, 6] = 1.0
    expected[ch(scatter, "tag:type:wall"), 1, 2] = 1.0
    expected[ch(scatter, "tag:type:wall"), 3, 4] = 1.0
    expected[ch(scatter, "tag:type:mine"), 3, 4] = 1.0
    expected[ch(scatter, "inv:heart"), 3, 4] = math.log(4)
    for r, c in [(6, 6), (1, 2), (3, 4), (4, 5)]:
        expected[0, r, c] = 1.0
    assert torch.allclose(grid[0], expected) and glob.abs().sum() == 0


def test_random_tokens_with_tag_channels_match_the_reference():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (16, 40, 3), dtype=torch.uint8, generator=g)
    fids = torch.tensor([f[0] for f in FEATURES] + [6, 6, 6, 200])  # tags more often
    tokens[..., 1] = fids[torch.randint(0, len(fids), (16, 40), generator=g)].to(torch.uint8)
    tokens[..., 2] = torch.where(tokens[..., 1] == 6, tokens[..., 2] % 5, tokens[..., 2])  # ids 0-4, 2 past the names
    tokens[:, ::7, 0] = 0xFE
    tokens[:, 32:] = 255
    grid, glob = TokenScatter(TAGGED)(tokens)
    ref_grid, ref_glob = reference(TAGGED, tokens)
    assert torch.allclose(grid, ref_grid) and torch.allclose(glob, ref_glob)


def test_the_tables_are_buffers_a_state_dict_carries():
    a = TokenScatter(LAYOUT)
    other = TokenLayout(13, 13, tuple((fid, name, norm * 2) for fid, name, norm in FEATURES))
    b = TokenScatter(other)
    tokens = obs([[0x66, 6, 4]])
    assert not torch.equal(a(tokens)[0], b(tokens)[0])
    assert {"grid_index", "global_index", "occupied_index", "scale"} <= set(a.state_dict())
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(tokens)[0], b(tokens)[0])


def test_mettagrid_arena_declares_52_features_of_which_15_channels_and_7_globals():
    from mettagrid.builder.envs import make_arena
    from mettagrid.policy.policy_env_interface import PolicyEnvInterface

    pei = PolicyEnvInterface.from_mg_cfg(make_arena(num_agents=24))
    layout = TokenLayout(pei.obs_height, pei.obs_width, tuple((f.id, f.name, f.normalization) for f in pei.obs_features))
    plan = plan_channels(layout)
    assert len(layout.features) == 52
    assert plan.channels[:5] == (OCCUPIED, "agent:group", "vibe", "tag", "agent_id") and len(plan.channels) == 15
    assert plan.first_amount_channel == 5
    assert all(name.startswith("inv:") and ":p" not in name for name in plan.channels[5:])
    assert plan.globals == ("episode_completion_pct", "last_action", "last_reward", "lp:east", "lp:west", "lp:north", "lp:south")


def test_bad_layouts_are_one_line_errors():
    with pytest.raises(ValueError, match="window 16x13"):
        plan_channels(TokenLayout(16, 13, FEATURES))
    with pytest.raises(ValueError, match="'tag' has normalization 0"):
        plan_channels(TokenLayout(13, 13, ((6, "tag", 0.0),)))
    with pytest.raises(ValueError, match=r"tokens of shape \(5, 3\)"):
        TokenScatter(LAYOUT)(torch.zeros(5, 3, dtype=torch.uint8))
