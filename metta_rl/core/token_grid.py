"""MettaGrid token observations as a dense grid: the learner-side scatter.

A MettaGrid observation is ``[N, 3]`` uint8 tokens ``[location, feature id, value]``. The
location byte packs the cell in the agent's egocentric window as ``(row << 4) | col``;
``0xFF`` is an empty (padding) token and ``0xFE`` a global token (episode completion, last
action, last reward, ...), which has no cell. A token's index in the array is not a fixed
cell (globals come first, then cells by distance), so a network must place tokens by their
location: :class:`TokenScatter` turns ``[B, N, 3]`` tokens into a ``[B, C, H, W]`` float grid
and a ``[B, G]`` global vector with a few table lookups and scatters, batched, in torch (on the
learner; scattering inside env workers, as mettagrid's ``GridObsWrapper`` does in numpy,
makes env stepping 3-5x slower).

Which features get a channel (:func:`plan_channels`) is decided from the feature names
mettagrid 0.26 declares (``PolicyEnvInterface.from_mg_cfg(cfg).obs_features``, itself a
function of the env config), by what its C++ emits where:

- spatial (a cell's object): ``tag``, ``vibe``, ``agent:group``, ``agent_id``, ``aoe_mask``
  and ``inv:<resource>``: grid channels only;
- global: ``episode_completion_pct``, ``last_action``, ``last_action_move``,
  ``last_reward``, ``lp:*`` (offset from spawn), ``territory:*``: global slots only;
- declared but never emitted by mettagrid 0.26: ``goal`` (even with ``goal_obs=true``) and
  ``protocol_input:*`` / ``protocol_output:*`` (no 0.26 object has protocols): no channel;
- any other name (a named game value of ``global_obs.obs``, a future feature): both a
  channel and a global slot, so no feature that can appear is ever lost;
- ``<name>:p<k>`` (the k-th base-``B`` digit of a multi-token amount, e.g. an inventory of
  256 or more): no channel of its own; it adds ``value * B**k`` to ``<name>``'s channel, so
  the channel holds the whole count. ``B`` is the digit token's normalization (mettagrid
  declares every digit of a multi-token feature with normalization ``token_value_base``).

Values: an *amount* (``inv:*`` and any feature with ``:p<k>`` digits: inventories, named game
values) becomes ``log(1 + count)``; every other value is divided by its feature's
normalization. mettagrid declares an amount's normalization as the digit base (256), which
would make one heart 0.004: on navigation (seed 0, 320k steps, lr 1e-3) the policy reached a
training return of 3.1 with count / 256, 5.1 with the count and 5.5 with log(1 + count) (random
policy: 1.7). The log keeps large inventories (arena) near the scale of the other channels. Channel 0, ``occupied``, is 1 on every cell that has
any token: categorical features with value 0 (the first tag, group 0, agent id 0) would
otherwise scale to nothing and make their object invisible.

Tags (the object types, ``type:wall``, ``type:mine``, ...): when the layout carries the env's
tag names (``TokenLayout.tags``, from ``PolicyEnvInterface.tags``), each tag gets a channel of
its own, 1 where an object has it (a token's value is its tag id); a tag id as one scaled value
would code five object types as 0, 0.1, ..., 0.4 in one channel, for the CNN to tell apart.
Without the names, ``tag`` is one channel like the other categorical features.

Several tokens of one channel at one cell *add up* (before the log): that is what makes the
digits of a multi-token value one amount (and, without tag names, an object with several tags
shows the sum of their tag ids). Tokens of
unknown feature ids (not in the layout, or dropped) and tokens outside the window are
ignored, never an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    """How a MettaGrid token observation maps onto a grid: the egocentric window and the features."""
    height: int
    width: int
    features: tuple[tuple[int, str, float], ...]  # (feature id, name, normalization)
    tags: tuple[str, ...] = ()  # tag names by id (PolicyEnvInterface.tags); empty: unknown


EMPTY_LOCATION = 0xFF
GLOBAL_LOCATION = 0xFE
OCCUPIED = "occupied"
MAX_WINDOW = 15  # a location nibble is 0-14 (15 in the row nibble marks 0xFE/0xFF)

_SPATIAL = frozenset({"tag", "vibe", "agent:group", "agent_id", "aoe_mask"})
_SPATIAL_PREFIXES = ("inv:",)
_GLOBAL = frozenset({"episode_completion_pct", "last_action", "last_action_move", "last_reward"})
_GLOBAL_PREFIXES = ("lp:", "territory:")
_NEVER_EMITTED = frozenset({"goal"})
_NEVER_EMITTED_PREFIXES = ("protocol_input:", "protocol_output:")
_DIGIT = re.compile(r"^(?P<base>.+):p(?P<power>[1-9][0-9]*)$")


@dataclass(frozen=True)
class ChannelPlan:
    """Where each feature id goes: grid channel and/or global slot, and its value scale.

    Channels (and slots) are ordered: ``occupied``, the other features by id, then the amounts
    by id, so the amounts (``first_amount`` on) are one slice to compress."""

    channels: tuple[str, ...]  # grid channel names; channels[0] == OCCUPIED
    globals: tuple[str, ...]  # global slot names
    grid_channel: dict[int, int]  # feature id -> channel (absent: not on the grid)
    global_slot: dict[int, int]  # feature id -> slot (absent: not in the global vector)
    scale: dict[int, float]  # feature id -> multiplier of the token's value
    first_amount_channel: int  # channels[first_amount_channel:] are amounts (log1p of the count)
    first_amount_global: int  # likewise for globals
    tag_feature: int | None = None  # the ``tag`` feature id when tags are one-hot channels
    first_tag_channel: int = 0  # channels[first_tag_channel + tag id] is that tag's
    num_tags: int = 0


def _where(name: str) -> tuple[bool, bool]:
    """(on the grid, in the global vector) for a feature name; see the module docstring."""
    if name in _NEVER_EMITTED or name.startswith(_NEVER_EMITTED_PREFIXES):
        return False, False
    if name in _SPATIAL or name.startswith(_SPATIAL_PREFIXES):
        return True, False
    if name in _GLOBAL or name.startswith(_GLOBAL_PREFIXES):
        return False, True
    return True, True


def plan_channels(layout: TokenLayout) -> ChannelPlan:
    """The deterministic feature -> channel/slot mapping of a layout."""
    if not (1 <= layout.height <= MAX_WINDOW and 1 <= layout.width <= MAX_WINDOW):
        raise ValueError(f"token layout window {layout.height}x{layout.width} is invalid: expected 1-{MAX_WINDOW} cells a side")
    by_name: dict[str, tuple[int, float]] = {}
    for fid, name, norm in layout.features:
        if not 0 <= int(fid) <= 255:
            raise ValueError(f"token layout feature {name!r} has id {fid}: expected 0-255 (one byte)")
        if not norm > 0:
            raise ValueError(f"token layout feature {name!r} has normalization {norm}: expected > 0")
        by_name[name] = (int(fid), float(norm))
    digits = []  # (feature id, base name, power, digit base)
    for fid, name, norm in layout.features:
        digit = _DIGIT.match(name)
        if digit and digit["base"] in by_name:
            digits.append((int(fid), digit["base"], int(digit["power"]), float(norm)))
    digit_ids = {fid for fid, _, _, _ in digits}
    amounts = {base for _, base, _, _ in digits}
    amounts |= {name for name, (fid, _) in by_name.items() if name.startswith("inv:") and fid not in digit_ids}
    features = sorted(((fid, name) for name, (fid, _) in by_name.items() if fid not in digit_ids), key=lambda f: f[0])
    ordered = [f for f in features if f[1] not in amounts] + [f for f in features if f[1] in amounts]

    channels, globals_ = [OCCUPIED], []
    grid_channel: dict[int, int] = {}
    global_slot: dict[int, int] = {}
    scale: dict[int, float] = {}
    first_amount_channel = first_amount_global = None
    tag_feature, first_tag_channel = None, 0
    for fid, name in ordered:
        if name in amounts:
            first_amount_channel = len(channels) if first_amount_channel is None else first_amount_channel
            first_amount_global = len(globals_) if first_amount_global is None else first_amount_global
        if name == "tag" and layout.tags:
            tag_feature, first_tag_channel = fid, len(channels)
            channels.extend(f"tag:{tag}" for tag in layout.tags)
            scale[fid] = 1.0
            continue
        grid, glob = _where(name)
        if grid:
            grid_channel[fid] = len(channels)
            channels.append(name)
        if glob:
            global_slot[fid] = len(globals_)
            globals_.append(name)
        if grid or glob:
            scale[fid] = 1.0 if name in amounts else 1.0 / by_name[name][1]
    for fid, base, power, digit_base in digits:
        base_id = by_name[base][0]
        if base_id in grid_channel:
            grid_channel[fid] = grid_channel[base_id]
        if base_id in global_slot:
            global_slot[fid] = global_slot[base_id]
        if base_id in scale:
            scale[fid] = digit_base**power
    return ChannelPlan(
        tuple(channels),
        tuple(globals_),
        grid_channel,
        global_slot,
        scale,
        len(channels) if first_amount_channel is None else first_amount_channel,
        len(globals_) if first_amount_global is None else first_amount_global,
        tag_feature,
        first_tag_channel,
        len(layout.tags) if tag_feature is not None else 0,
    )


class TokenScatter(nn.Module):
    """``[B, N, 3]`` uint8 tokens -> ``(grid [B, C, H, W], globals [B, G])`` float32.

    The grid is channels-last in memory (``[B, H, W, C]`` contiguous): convolutions on CPU
    run about twice as fast on it, and the agent's own cell is one contiguous row.

    The lookup tables are buffers, so a checkpoint carries the mapping the weights were
    trained with: ``grid_index`` maps ``location * 256 + feature id`` to the offset
    ``cell * C + channel`` within an agent's grid (-1: not on the grid), ``global_index`` to a
    global slot (``G``: not a global), ``occupied_index`` a location to its ``occupied`` offset
    (-1: no cell), and ``scale`` a feature id to the multiplier of its value.
    """

    def __init__(self, layout: TokenLayout) -> None:
        super().__init__()
        plan = plan_channels(layout)
        self.plan = plan
        self.height, self.width = layout.height, layout.width
        self.num_channels, self.num_globals = len(plan.channels), len(plan.globals)
        channels = self.num_channels

        rows, cols = torch.meshgrid(torch.arange(self.height), torch.arange(self.width), indexing="ij")
        locations = ((rows << 4) | cols).reshape(-1)  # the location byte of each cell, row-major
        cell_offsets = torch.arange(self.height * self.width) * channels
        occupied_index = torch.full((256,), -1, dtype=torch.int64)
        occupied_index[locations] = cell_offsets  # channel 0
        grid_index = torch.full((256, 256), -1, dtype=torch.int64)
        if plan.grid_channel:
            fids = torch.tensor(list(plan.grid_channel))
            grid_index[locations.unsqueeze(1), fids] = cell_offsets.unsqueeze(1) + torch.tensor(list(plan.grid_channel.values()))
        global_index = torch.full((256, 256), self.num_globals, dtype=torch.int64)
        for fid, slot in plan.global_slot.items():
            global_index[GLOBAL_LOCATION, fid] = slot
        scale = torch.zeros(256, dtype=torch.float32)
        for fid, s in plan.scale.items():
            scale[fid] = s
        self.register_buffer("grid_index", grid_index.reshape(-1))
        self.register_buffer("global_index", global_index.reshape(-1))
        self.register_buffer("occupied_index", occupied_index)
        self.register_buffer("scale", scale)
        # Which feature ids are amounts (log1p of the count): derived from the plan, so not
        # saved (a checkpoint's tables stay as they were).
        amount = torch.zeros(256, dtype=torch.bool)
        for fid, channel in plan.grid_channel.items():
            amount[fid] = channel >= plan.first_amount_channel
        self.register_buffer("amount_feature", amount, persistent=False)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.dim() != 3 or tokens.shape[-1] != 3:
            raise ValueError(f"tokens of shape {tuple(tokens.shape)}: expected [batch, tokens, 3]")
        batch, device = tokens.shape[0], tokens.device
        t = tokens[:, : used_tokens(tokens)]
        # 1-D lookups with index_select: several times faster than advanced indexing on CPU.
        loc, fid = t[..., 0].reshape(-1).long(), t[..., 1].reshape(-1).long()
        key = loc * 256 + fid
        raw = t[..., 2].reshape(-1)  # a copy (t is a strided slice): made once
        values = raw.float() * self.scale.index_select(0, fid)
        per_agent = self.height * self.width * self.num_channels
        dump = batch * per_agent  # one slot past the grids takes every token that is not on them
        row_base = torch.arange(0, dump, per_agent, device=device).repeat_interleave(t.shape[1])
        grid = torch.zeros(dump + 1, dtype=torch.float32, device=device)
        occupied = self.occupied_index.index_select(0, loc)
        grid.index_fill_(0, torch.where(occupied >= 0, occupied + row_base, dump), 1.0)
        offset = self.grid_index.index_select(0, key)
        if self.plan.tag_feature is not None:
            # A tag token's value is its tag id: 1 in that tag's channel at the token's cell.
            tag_id = raw.long()
            is_tag = (fid == self.plan.tag_feature) & (occupied >= 0) & (tag_id < self.plan.num_tags)
            offset = torch.where(is_tag, occupied + self.plan.first_tag_channel + tag_id, offset)
            values = torch.where(fid == self.plan.tag_feature, is_tag.float(), values)
        target = torch.where(offset >= 0, offset + row_base, dump)
        grid.index_add_(0, target, values)
        if self.plan.first_amount_channel < self.num_channels:
            # log(1 + count) only at the cells amount tokens landed on (not over whole channels:
            # a strided pass over the grid cost more than the rest of the scatter). Several
            # digit tokens of one count share a cell: all read the summed count before any
            # write, so each writes the same log.
            at = target[self.amount_feature.index_select(0, fid)]
            grid.index_put_((at,), grid.index_select(0, at).log1p_())
        globals_ = torch.zeros(batch, self.num_globals + 1, dtype=torch.float32, device=device)
        slots = self.global_index.index_select(0, key).view(batch, -1)
        globals_.scatter_add_(1, slots, values.view(batch, -1))
        grid = grid[:dump].view(batch, self.height, self.width, self.num_channels)
        globals_ = globals_[:, : self.num_globals]
        if self.plan.first_amount_global < self.num_globals:
            globals_[:, self.plan.first_amount_global :].log1p_()
        return grid.permute(0, 3, 1, 2), globals_


def used_tokens(tokens: torch.Tensor) -> int:
    """Token positions up to the last one that is non-empty in any row of ``[..., N, 3]``
    (any leading dims: a batch ``[B, N, 3]``, a whole buffer ``[rows, T, N, 3]``).

    Positions past it are padding in every row; skipping them is most of the scatter's speed
    (navigation agents see ~15 tokens of 500, arena agents ~60). By position, not by count:
    it does not rely on padding coming last within a row.
    """
    if tokens.numel() == 0:
        return 0
    locations = tokens[..., 0]
    dims = tuple(range(locations.dim() - 1))
    if tokens.device.type == "cpu":
        # numpy's uint8 min over a strided view: no copy, ~8x faster than torch's amin here
        # (a 49k-step arena buffer: ~40 ms against ~300).
        nonempty = torch.from_numpy(locations.numpy().min(axis=dims) != EMPTY_LOCATION)
    else:
        nonempty = locations.amin(dim=dims) != EMPTY_LOCATION
    positions = torch.arange(1, tokens.shape[-2] + 1, device=nonempty.device)
    return int((nonempty * positions).max())
