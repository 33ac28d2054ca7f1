"""One tiny model per op family the dependency analysis must handle (test fixtures).

Each factory returns ``(model, example_args)`` with fixed weights so repeated calls agree.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 12), nn.Tanh(),
                                 nn.Linear(12, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


class Residual(nn.Module):
    """x = W0 in; y = x + W2 relu(W1 x): W0 rows, W2 rows and W3 columns are one group."""

    def __init__(self):
        super().__init__()
        self.stem, self.inner, self.outer, self.head = nn.Linear(6, 16), nn.Linear(16, 8), nn.Linear(8, 16), nn.Linear(16, 1)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.outer(F.relu(self.inner(h)))
        return self.head(h)


class CatOffsets(nn.Module):
    """cat of two branches: the head's columns split at the offset into two independent groups."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 10), nn.Linear(6, 14), nn.Linear(24, 1)

    def forward(self, x):
        return self.head(torch.cat([F.relu(self.a(x)), torch.sigmoid(self.b(x))], dim=1))


class SplitChunkSlice(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 16)
        self.left, self.right = nn.Linear(8, 3), nn.Linear(8, 3)
        self.wide = nn.Linear(6, 12)
        self.tail = nn.Linear(5, 3)

    def forward(self, x):
        p, q = self.proj(x).chunk(2, dim=-1)
        s, t = torch.split(self.wide(x), [7, 5], dim=1)
        sliced = self.wide(x)[:, 7:]
        return self.left(p) + self.right(q) + self.tail(t) + self.tail(sliced) + s.sum(1, keepdim=True)


class FieldEmbeddings(nn.Module):
    """stack -> (B, F, D) -> view(B, F*D) -> Linear: column f*D + d belongs to embedding dim d."""

    def __init__(self, fields=3, dim=4):
        super().__init__()
        self.fields, self.dim = fields, dim
        self.tables = nn.ModuleList(nn.Embedding(10, dim) for _ in range(fields))
        self.mlp = nn.Sequential(nn.Linear(fields * dim, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, ids):
        e = torch.stack([t(ids[:, i]) for i, t in enumerate(self.tables)], dim=1)
        return self.mlp(e.view(-1, self.fields * self.dim)).squeeze(-1)


class FactorizationMachine(nn.Module):
    """einsum/bmm contract the embedding dim; transpose/permute; FM sum-of-squares; reductions."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(30, 6)
        self.proj = nn.Linear(6, 6)
        self.head = nn.Linear(9, 1)

    def forward(self, ids):
        e = self.proj(self.table(ids))  # (B, F, D)
        pair = torch.einsum("bfd,bgd->bfg", e, e).flatten(1)  # (B, F*F)
        dots = torch.bmm(e, e.transpose(1, 2)).sum(dim=(1, 2))
        fm = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1)
        perm = e.permute(0, 2, 1).sum(-1).amax(-1)
        return self.head(pair).squeeze(-1) + dots + fm + perm


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b, self.ln, self.c = nn.Linear(6, 12), nn.BatchNorm1d(12), nn.Linear(12, 10), nn.LayerNorm(10), nn.Linear(10, 1)

    def forward(self, x):
        return self.c(self.ln(F.relu(self.b(F.relu(self.bn(self.a(x))))))).squeeze(-1)


class HandAttention(nn.Module):
    """Multi-head self-attention over field embeddings: whole heads form a group."""

    def __init__(self, fields=4, dim=8, heads=2, head_dim=4):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.table = nn.Embedding(20, dim)
        self.q, self.k, self.v = (nn.Linear(dim, heads * head_dim) for _ in range(3))
        self.out = nn.Linear(heads * head_dim, dim)
        self.head = nn.Linear(fields * dim, 1)

    def forward(self, ids):
        x = self.table(ids)
        b, f, _ = x.shape
        q = self.q(x).view(b, f, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, f, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, f, self.heads, self.head_dim).transpose(1, 2)
        att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / 2.0, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, f, self.heads * self.head_dim)
        x = x + self.out(y)
        return self.head(x.flatten(1)).squeeze(-1)


class SdpaAttention(nn.Module):
    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads = heads
        self.table = nn.Embedding(20, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, ids):
        x = self.table(ids)
        b, l, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (t.view(b, l, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, scale=0.5).transpose(1, 2).reshape(b, l, d)
        return self.out(y).mean(1).squeeze(-1)


class TorchMHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(20, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, ids):
        x = self.table(ids)
        y, _ = self.mha(x, x, x)
        return self.mlp(y.mean(1)).squeeze(-1)


class BagAndConv(nn.Module):
    """EmbeddingBag with offsets and a Conv1d over fields (xDeepFM CIN-style)."""

    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(40, 6, mode="sum")
        self.table = nn.Embedding(20, 6)
        self.conv = nn.Conv1d(3, 5, kernel_size=1)
        self.head = nn.Linear(5 + 6, 1)

    def forward(self, ids, bag_ids, offsets):
        pooled = self.bag(bag_ids, offsets)  # (B, D)
        fields = self.table(ids)  # (B, 3, D)
        cin = F.relu(self.conv(fields)).sum(-1)  # (B, 5)
        return self.head(torch.cat([cin, pooled], 1)).squeeze(-1)


class DictInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.user, self.item = nn.Embedding(10, 8), nn.Embedding(15, 8)
        self.user_tower, self.item_tower = nn.Linear(8 + 3, 12), nn.Linear(8, 12)

    def forward(self, features: dict):
        u = self.user_tower(torch.cat([self.user(features["user"]), features["age"]], 1))
        i = self.item_tower(self.item(features["item"]))
        return (u * i).sum(-1)


def _seeded(cls, args_fn):
    def factory():
        torch.manual_seed(0)
        model = cls()
        return model, args_fn()
    return factory


def _ids(*shape, high=10):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(1))


FAMILIES = {
    "mlp": _seeded(MLP, lambda: (torch.randn(4, 6, generator=torch.Generator().manual_seed(1)),)),
    "residual": _seeded(Residual, lambda: (torch.randn(4, 6, generator=torch.Generator().manual_seed(1)),)),
    "cat": _seeded(CatOffsets, lambda: (torch.randn(4, 6, generator=torch.Generator().manual_seed(1)),)),
    "split": _seeded(SplitChunkSlice, lambda: (torch.randn(4, 6, generator=torch.Generator().manual_seed(1)),)),
    "field_view": _seeded(FieldEmbeddings, lambda: (_ids(4, 3),)),
    "fm_einsum_bmm": _seeded(FactorizationMachine, lambda: (_ids(4, 3, high=30),)),
    "norms": _seeded(Norms, lambda: (torch.randn(4, 6, generator=torch.Generator().manual_seed(1)),)),
    "hand_attention": _seeded(HandAttention, lambda: (_ids(4, 4, high=20),)),
    "sdpa": _seeded(SdpaAttention, lambda: (_ids(4, 5, high=20),)),
    "torch_mha": _seeded(TorchMHA, lambda: (_ids(4, 5, high=20),)),
    "bag_conv": _seeded(BagAndConv, lambda: (_ids(4, 3, high=20), _ids(10, high=40), torch.tensor([0, 2, 5, 7]))),
    "dict_inputs": _seeded(DictInputs, lambda: ({"user": _ids(4), "item": _ids(4, high=15),
                                                  "age": torch.randn(4, 3, generator=torch.Generator().manual_seed(2))},)),
}


class MaskAnd(nn.Module):
    """``a & b`` of two masks (aten.__and__) gating a hidden layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 10), nn.Linear(10, 1)

    def forward(self, x):
        h = self.a(x)
        keep = (h > -1.0) & (x.sum(1, keepdim=True) > -100.0)
        return self.b(torch.where(keep, h, torch.zeros_like(h))).squeeze(-1)


class InPlace(nn.Module):
    """In-place ``tanh_`` and ``unsqueeze_``: the hidden layer stays one group."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 10), nn.Linear(10, 1)

    def forward(self, x):
        h = self.a(x)
        h.tanh_()
        g = h * 2.0  # tanh_'s backward needs its output unchanged
        g.unsqueeze_(1)  # (B, 1, H)
        return self.b(g).sum((1, 2))


class SoftmaxTranspose(nn.Module):
    """``torch.softmax(x, dim, dtype)`` (softmax.int) over hidden units and ``weight.T`` (numpy_T)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 10)
        self.proj = nn.Parameter(torch.randn(4, 10) * 0.3)
        self.b = nn.Linear(4, 1)

    def forward(self, x):
        h = torch.softmax(self.a(x), dim=-1, dtype=torch.float32)
        return self.b(h @ self.proj.T).squeeze(-1)


class GLUGate(nn.Module):
    """``F.glu``: rows i and H + i of the producing Linear are one channel."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(8, 1)

    def forward(self, x):
        return self.b(F.glu(self.a(x), dim=-1)).squeeze(-1)


class Recurrent(nn.Module):
    """``nn.GRU`` then ``nn.LSTM``: each one's hidden units are a group (gate blocks move together)."""

    def __init__(self, bidirectional=False, layers=1):
        super().__init__()
        self.table = nn.Embedding(20, 6)
        self.gru = nn.GRU(6, 8, batch_first=True)
        self.lstm = nn.LSTM(8, 5, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.head = nn.Linear(5 * (2 if bidirectional else 1), 1)

    def forward(self, ids):
        states, h_n = self.gru(self.table(ids))
        states, (h, c) = self.lstm(F.relu(states))
        return self.head(states[:, -1]).squeeze(-1) + h_n.sum((0, 2))


FAMILIES.update({
    "mask_and": _seeded(MaskAnd, lambda: (torch.randn(4, 6, generator=torch.Generator().manual_seed(1)),)),
    "in_place": _seeded(InPlace, lambda: (torch.randn(4, 6, generator=torch.Generator().manual_seed(1)),)),
    "softmax_transpose": _seeded(SoftmaxTranspose, lambda: (torch.randn(4, 6, generator=torch.Generator().manual_seed(1)),)),
    "glu": _seeded(GLUGate, lambda: (torch.randn(4, 6, generator=torch.Generator().manual_seed(1)),)),
    "gru_lstm": _seeded(Recurrent, lambda: (_ids(4, 5, high=20),)),
    "lstm_bidirectional": _seeded(lambda: Recurrent(bidirectional=True, layers=2), lambda: (_ids(4, 5, high=20),)),
})
