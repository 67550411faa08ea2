"""The seed's motion-prediction model (section 3.3): a Wayformer-style encoder-decoder transformer.

Input: one packed scenario row per sample (goodfit_cli.data.motion.MotionLayout; the model
unpacks it with views). One MLP per modality turns each element into a `token_dim` token: the
target agent's history (1 token), each nearby agent's history (`agents` tokens), each map
polyline (`polylines` tokens) and each traffic light's states (`lights` tokens); learned positional
embeddings (normal, std 0.02) are added, the tokens are projected to `width` and go through
`enc_layers` self-attention layers. Six learned queries (std 0.02) then go through `dec_layers`
decoder layers, each self-attention among the queries, cross-attention to the encoder tokens and
a feed-forward block (nn.TransformerDecoderLayer; we keep the query self-attention, as Wayformer
does, so the modes can spread out). The head, an MLP per query, gives 80 steps of (dx, dy)
whose running sum is the trajectory, plus one logit: output (B, modes, future·2 + 1).

Masks: features under a False mask are zeroed before the MLPs, and a token with no valid step or
point is left out of attention (key padding), so masked-out values cannot change the output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from goodfit_cli.core.args import ArgError, check_float, check_int
from goodfit_cli.data.motion.format import (
    AGENT_FEATURES,
    AGENT_TYPES,
    FUTURE,
    HISTORY,
    LIGHT_FEATURES,
    MAP_FEATURES,
    MotionLayout,
    zero_masked,
)

POSITION_SCALE = 0.1  # metres and m/s enter the MLPs divided by 10


def _mlp(n_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, dim), nn.LayerNorm(dim), nn.ReLU(), nn.Linear(dim, dim))


class MotionTransformer(nn.Module):
    """Per-modality MLPs → tokens + positions → encoder → decoder from learned queries → head."""

    def __init__(self, layout: MotionLayout, token_dim: int, width: int, heads: int, ffn: int,
                 enc_layers: int, dec_layers: int, modes: int, future: int, head_hidden: int,
                 dropout: float) -> None:
        super().__init__()
        self.layout, self.modes, self.future = layout, modes, future
        h, na, nm, nl = HISTORY, len(AGENT_FEATURES), len(MAP_FEATURES), len(LIGHT_FEATURES)
        agent_in = h * na + h + len(AGENT_TYPES)
        self.embed_target = _mlp(agent_in, token_dim)
        self.embed_agents = _mlp(agent_in, token_dim)
        self.embed_map = _mlp(layout.points * (nm + 1), token_dim)
        self.embed_lights = _mlp(h * (nl + 1), token_dim)
        self.n_tokens = 1 + layout.agents + layout.polylines + layout.lights
        self.pos_embed = nn.Parameter(torch.randn(1, self.n_tokens, token_dim) * 0.02)
        self.proj = nn.Linear(token_dim, width)
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, ffn, dropout, batch_first=True, norm_first=True)
            for _ in range(enc_layers))
        self.enc_norm = nn.LayerNorm(width)
        self.queries = nn.Parameter(torch.randn(1, modes, width) * 0.02)
        self.decoder = nn.ModuleList(
            nn.TransformerDecoderLayer(width, heads, ffn, dropout, batch_first=True, norm_first=True)
            for _ in range(dec_layers))
        self.dec_norm = nn.LayerNorm(width)
        self.head = nn.Sequential(nn.Linear(width, head_hidden), nn.ReLU(),
                                  nn.Linear(head_hidden, future * 2 + 1))
        self.num_features = width
        scale = torch.ones(na)
        scale[:4] = POSITION_SCALE  # x, y, vx, vy
        self.register_buffer("agent_scale", scale, persistent=False)
        mscale = torch.ones(nm)
        mscale[:2] = POSITION_SCALE
        self.register_buffer("map_scale", mscale, persistent=False)
        lscale = torch.ones(nl)
        lscale[:2] = POSITION_SCALE
        self.register_buffer("light_scale", lscale, persistent=False)

    def tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, F) → tokens (B, n_tokens, token_dim) and padding mask (B, n_tokens), True = left out."""
        f = zero_masked(self.layout.unpack(x))
        b, lay = x.shape[0], self.layout
        tgt = torch.cat([(f["target_history"] * self.agent_scale).flatten(1), f["target_valid"],
                         f["target_type"]], 1)
        agents = torch.cat([(f["agents_history"] * self.agent_scale).flatten(2), f["agents_valid"],
                            f["agents_type"]], 2)  # (B, A, ·)
        maps = torch.cat([f["map_points"] * self.map_scale, f["map_valid"][..., None]], 3).flatten(2)
        lights = torch.cat([f["lights_state"] * self.light_scale, f["lights_valid"][..., None]], 3).flatten(2)
        tok = torch.cat([self.embed_target(tgt)[:, None], self.embed_agents(agents),
                         self.embed_map(maps), self.embed_lights(lights)], 1) + self.pos_embed
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=x.device),
                         f["agents_valid"].reshape(b, lay.agents, -1).sum(-1) == 0,
                         f["map_valid"].reshape(b, lay.polylines, -1).sum(-1) == 0,
                         f["lights_valid"].reshape(b, lay.lights, -1).sum(-1) == 0], 1)
        return tok, pad

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, F) → decoded queries (B, modes, width)."""
        tok, pad = self.tokens(x)
        mem = self.proj(tok)  # (B, T, width)
        for layer in self.encoder:
            mem = layer(mem, src_key_padding_mask=pad)
        mem = self.enc_norm(mem).masked_fill(pad[..., None], 0.0)
        q = self.queries.expand(x.shape[0], -1, -1)
        for layer in self.decoder:
            q = layer(q, mem, memory_key_padding_mask=pad)
        return self.dec_norm(q)

    def forward_head(self, feat: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, modes, width) → (B, modes, future·2 + 1): trajectory (x, y per step) then logit;
        pre_logits: the modes' mean embedding (B, width)."""
        if pre_logits:
            return feat.mean(1)
        out = self.head(feat)  # (B, M, 2·future + 1)
        steps = out[..., :-1].reshape(*out.shape[:2], self.future, 2).cumsum(2)  # (B, M, T, 2)
        return torch.cat([steps.flatten(2), out[..., -1:]], -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def motion_transformer(
    agents: int = 16,
    polylines: int = 64,
    points: int = 10,
    lights: int = 4,
    token_dim: int = 64,
    width: int = 256,
    heads: int = 8,
    ffn: int = 1024,
    enc_layers: int = 2,
    dec_layers: int = 8,
    modes: int = 6,
    head_hidden: int = 256,
    dropout: float = 0.1,
) -> MotionTransformer:
    """The seed's sizes by default; agents/polylines/points/lights must match the data's."""
    layout = MotionLayout(check_int("agents", agents, 0), check_int("polylines", polylines, 1),
                          check_int("points", points, 1), check_int("lights", lights, 0))
    for key, value in (("token_dim", token_dim), ("width", width), ("heads", heads), ("ffn", ffn),
                       ("modes", modes), ("head_hidden", head_hidden)):
        check_int(key, value, 1)
    check_int("enc_layers", enc_layers, 0)
    check_int("dec_layers", dec_layers, 1)
    if width % heads:
        raise ArgError("heads", f"width {width} must be divisible by heads {heads}")
    dropout = check_float("dropout", dropout, 0.0)
    if dropout >= 1:
        raise ArgError("dropout", f"must be below 1, got {dropout}")
    model = MotionTransformer(layout, token_dim, width, heads, ffn, enc_layers, dec_layers, modes,
                              FUTURE, head_hidden, dropout)
    model.goodfit_head_prefixes = ["head."]
    return model
