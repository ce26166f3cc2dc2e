"""torchvision's AutoAugment with one sub-policy per sample of a uint8 batch: the draw and two dispatches.

:meth:`BatchAutoAugment.draw` is the only random part: per sample a sub-policy, a coin per slot
that applies its op with the op's probability (``u <= p``, as torchvision) and a sign for signed
ops.  :meth:`BatchAutoAugment.apply` then runs the two slots in order on 1-channel images (the
augmentation contract's input; the kernels of :mod:`fastfm.augment.autoaugment_ops`, the
torchvision reference, also take 3 channels).  A sample runs one op (or none) per slot, and two
dispatches compute the same bits from the same draws:

* **masked** (:meth:`~BatchAutoAugment.masked_slot`; CUDA and ``torch.compile``): the whole batch
  goes through each stage the slot's ops need, every stage the identity for the samples of other
  ops, so no tensor value is read on the host and the launches stay asynchronous.  On int64 pixel
  values (B, H*W): the warp is one ``gather`` through a per-(op, bin, sign) source index; the
  pointwise ops are one ``gather`` through each sample's 256-entry table, picked among the static
  table and those built from the image's statistics; Sharpness is one depthwise ``conv2d`` and a
  blend whose factor is 0 for other samples.  The number of ATen calls does not depend on the batch.
* **grouped** (:meth:`~BatchAutoAugment.grouped_slot`; CPU, where a host read is free and every
  full-batch pass costs compute): the samples are sorted by op group, each group is gathered,
  transformed by the kernels and written back, so a sample pays for its own op only.

Ops that cannot occur in a slot of the policy are skipped (static knowledge of the table, not of
the data).  Whatever depends only on (op, magnitude bin, sign) -- affine matrices, warp indices,
static lookup tables -- is computed once per image size (:meth:`BatchAutoAugment.tables`), so a
batch only indexes it.
"""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F

from .autoaugment_ops import (GEOMETRIC, NUM_BINS, OP, OPS, POINTWISE, POLICIES, SIGNED,
                              autocontrast_px, brightness_px, contrast_px, equalize_lut, f64,
                              geometric_matrix, grayscale_mean, invert_px, magnitude_bins,
                              minmax_from_hist, pixel_grid, posterize_px, sharpen, solarize_px,
                              warp_index, warp_nearest)

# Grouped dispatch: the group of each op.  "lut": ops whose lookup table is static; "contrast",
# "autocontrast", "equalize": tables from the group's statistics.  The four pointwise groups must
# stay adjacent, autocontrast just before equalize (they share one histogram).  Color is the
# identity on 1 channel.
_GROUPS = ("identity", "geometric", "lut", "contrast", "autocontrast", "equalize", "sharpness")
_GROUP_OF = {"Identity": 0, "Color": 0, **{n: 1 for n in GEOMETRIC},
             **{n: 2 for n in ("Brightness", "Posterize", "Solarize", "Invert")},
             "Contrast": 3, "AutoContrast": 4, "Equalize": 5, "Sharpness": 6}

_STATIC_LUT_OPS = ("Brightness", "Posterize", "Solarize", "Invert")
_STAT_LUT_OPS = ("Contrast", "AutoContrast", "Equalize")       # tables from image statistics
_GEOMETRIC_SET = frozenset(GEOMETRIC)
_POINTWISE_SET = frozenset(POINTWISE)
_STAT_SET = frozenset(_STAT_LUT_OPS)


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected uint8 images (B, 1, H, W), got {images.dtype} {tuple(images.shape)}")


def _signed(mag: torch.Tensor, op: torch.Tensor, bins: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    m = mag[op, bins]
    return torch.where(negative.bool(), -m, m)


def _host_tables(height: int, width: int) -> dict[str, torch.Tensor]:
    """The tables computed on the host (float64 math, as torchvision's Python floats)."""
    bins = magnitude_bins(height, width)
    n_ops = len(OPS)
    mag = torch.stack([bins[name] if bins.get(name) is not None else torch.zeros(NUM_BINS)
                       for name in OPS]).float()                          # (ops, bins)
    signed = torch.tensor([name in SIGNED for name in OPS]).view(n_ops, 1, 1)
    sign = torch.tensor([1.0, -1.0]).view(1, 1, 2)
    smag = torch.where(signed, mag.unsqueeze(-1) * sign, mag.unsqueeze(-1).expand(-1, -1, 2))
    op_ids = torch.arange(n_ops).view(n_ops, 1, 1).expand_as(smag)
    theta = geometric_matrix(op_ids.reshape(-1), smag.reshape(-1).double(), height, width)
    theta = theta.float().view(n_ops, NUM_BINS, 2, 2, 3)
    v = torch.arange(256, dtype=torch.uint8).view(1, 1, 256)
    lut = v.expand(n_ops * NUM_BINS * 2, 1, 256).clone()
    flat_op, flat_m = op_ids.reshape(-1), smag.reshape(-1)
    for name in _STATIC_LUT_OPS:
        rows = flat_op == OP[name]
        m = flat_m[rows]
        if name == "Brightness":
            table = brightness_px(v, (1.0 + m.double()).float())
        elif name == "Posterize":
            table = posterize_px(v, m)
        elif name == "Solarize":
            table = solarize_px(v, m)
        else:
            table = invert_px(v).expand(len(m), 1, 256)
        lut[rows] = table
    return {"mag": mag, "theta": theta, "lut": lut.view(n_ops, NUM_BINS, 2, 256),
            "grid": pixel_grid(height, width), "v": v}


def _tables(height: int, width: int, device: torch.device) -> dict[str, torch.Tensor]:
    """:meth:`BatchAutoAugment.tables`: the host tables moved to ``device``, and the masked
    dispatch's tables derived from them there with the kernels' own arithmetic."""
    t = {k: v.to(device) for k, v in _host_tables(height, width).items()}
    hp, n, n_ops = f64(device), height * width, len(OPS)
    op_ids = torch.arange(n_ops, device=device).view(n_ops, 1, 1).expand(n_ops, NUM_BINS, 2)
    bin_ids = torch.arange(NUM_BINS, device=device).view(1, NUM_BINS, 1).expand_as(op_ids)
    neg_ids = torch.arange(2, device=device).view(1, 1, 2).expand_as(op_ids)
    smag = _signed(t["mag"], op_ids, bin_ids, neg_ids)                    # (ops, bins, 2) float32
    is_geometric = torch.tensor([name in GEOMETRIC for name in OPS], device=device)
    # warp: source indices of the geometric ops, identity elsewhere
    src = warp_index(t["theta"].reshape(-1, 2, 3), height, width, t["grid"]).view(n_ops, NUM_BINS, 2, n)
    ident = torch.arange(n, device=device).expand_as(src)
    t["warp"] = torch.where(is_geometric[op_ids].unsqueeze(-1), src, ident).contiguous()
    t["lutf"] = t["lut"].float()
    # Contrast (as contrast_px): ratio = float32(1 + m), v * ratio in float32, and -m
    ratio = (1.0 + smag.to(hp)).float()
    t["vr"] = t["v"].float().mul(ratio.view(-1, 1, 1)).view(n_ops, NUM_BINS, 2, 256).to(hp)
    t["negm"] = (-smag).to(hp).unsqueeze(-1)
    # Sharpness (as sharpen): -m on the interior pixels, 0 elsewhere and for other ops
    inner = torch.zeros(height, width, dtype=hp, device=device)
    inner[1:-1, 1:-1] = 1.0
    is_sharp = (op_ids == OP["Sharpness"]).unsqueeze(-1)
    sharp = torch.where(is_sharp, (-smag).to(hp).unsqueeze(-1), torch.zeros((), dtype=hp, device=device))
    t["sharp"] = (sharp.view(n_ops, NUM_BINS, 2, 1, 1) * inner.view(1, 1, 1, height, width)).contiguous()
    inv = torch.arange(256, device=device, dtype=torch.float32).mul_(1.0 / 255)   # as autocontrast_px
    inv[0] = 1.0
    t["inv"] = inv
    step = torch.div(torch.arange(n + 1, device=device), 255, rounding_mode="floor")
    t["eq"] = torch.stack((step // 2, step.clamp(min=1)), dim=-1)
    t["vf"] = t["v"].float().view(1, 256)
    t["ones"] = torch.ones(1, 1, dtype=torch.long, device=device)
    return t


class BatchAutoAugment:
    """torchvision AutoAugment with an independent sub-policy per sample of a uint8 (B, 1, H, W) batch.

    ``aa(images, generator)`` is ``aa.apply(images, aa.draw(B, generator))``.  ``dispatch``:
    ``"masked"``, ``"grouped"`` or ``"auto"`` (grouped on CPU tensors, masked elsewhere); both
    consume the generator identically and give bit-identical results.
    """

    DISPATCHES = ("auto", "masked", "grouped")

    def __init__(self, policy: str, device: torch.device | str, dispatch: str = "auto"):
        if policy not in POLICIES:
            raise ValueError(f"unknown AutoAugment policy {policy!r}; one of {', '.join(POLICIES)}")
        if dispatch not in self.DISPATCHES:
            raise ValueError(f"unknown dispatch {dispatch!r}; one of {', '.join(self.DISPATCHES)}")
        self.policy = policy
        self.dispatch = dispatch
        self.device = torch.device(device)
        table = POLICIES[policy]
        self.num_policies = len(table)
        self.op = torch.tensor([[OP[o[0]] for o in sub] for sub in table], device=self.device)
        self.prob = torch.tensor([[o[1] for o in sub] for sub in table], device=self.device)
        self.bins = torch.tensor([[o[2] if o[2] is not None else 0 for o in sub] for sub in table],
                                 device=self.device)
        self.signed = torch.tensor([name in SIGNED for name in OPS], device=self.device)
        self._signed_long = self.signed.long()
        # Ops that can occur in each slot: static knowledge used to skip whole stages.
        self.slot_ops = [frozenset(sub[s][0] for sub in table) for s in range(2)]
        self._group_key = torch.tensor([_GROUP_OF[name] for name in OPS], device=self.device)
        # Masked dispatch: for each set of statistics-based ops in a slot, op id -> the index of its
        # candidate table (0: the static one; then those of the set, in _STAT_LUT_OPS order).
        self._lut_kind = {}
        for r in range(len(_STAT_LUT_OPS) + 1):
            for names in combinations(_STAT_LUT_OPS, r):
                kind = torch.zeros(len(OPS), dtype=torch.long)
                for k, name in enumerate(names, 1):
                    kind[OP[name]] = k
                self._lut_kind[frozenset(names)] = kind.to(self.device)
        self._tables: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self._per_batch: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, height: int, width: int) -> dict[str, torch.Tensor]:
        """Device tables for one image size, built once.  Per (op, bin, sign), identity for the ops
        they do not concern, N = H*W:

        * ``theta`` (2, 3) float32: inverse affine matrix;  ``warp`` (N,) int64: its source pixel of
          each output pixel (:func:`~fastfm.augment.autoaugment_ops.warp_index`, N = fill 0);
        * ``lut`` (256,) uint8: the table of an op that needs no statistics;  ``lutf``: as float32;
        * ``vr`` (256,) float64 and ``negm`` (1,) float64: Contrast's ``v * (1 + m)`` (a float32
          product) and ``-m``, so its table is one ``addcmul`` with the image mean;
        * ``sharp`` (H, W) float64: Sharpness's ``-m`` inside the image, 0 on the border.

        Per op and bin: ``mag`` float32 (torchvision's magnitudes, 0 for magnitude-free ops).
        Constants: ``grid`` (N, 3) the pixel-centred base grid; ``v`` (1, 1, 256) uint8 and ``vf``
        (1, 256) float32 the values; ``inv`` (256,) AutoContrast's ``(hi - lo) / 255`` by
        ``hi - lo`` (1 for 0); ``eq`` (N + 1, 2) Equalize's ``(step // 2, max(step, 1))`` by the
        count of non-maximal pixels; ``ones`` (1, 1) int64.
        """
        key = (height, width)
        if key not in self._tables:
            self._tables[key] = _tables(height, width, self.device)
        return self._tables[key]

    def magnitude(self, op: torch.Tensor, bins: torch.Tensor, negative: torch.Tensor,
                  height: int, width: int) -> torch.Tensor:
        """Signed float32 magnitudes of (op, bin, negative) index tensors (any common shape)."""
        return _signed(self.tables(height, width)["mag"], op, bins, negative)

    def draw(self, n: int, generator: torch.Generator):
        """Per sample and slot: op ids (n, 2) long (0 = Identity where the coin said no), magnitude
        bins (n, 2) long, and negative (n, 2) long (1 = negated; only ever for signed ops)."""
        dev = self.device
        pid = torch.randint(0, self.num_policies, (n,), generator=generator, device=dev)
        coin = torch.rand(n, 2, generator=generator, device=dev)
        negative = torch.randint(0, 2, (n, 2), generator=generator, device=dev) == 0
        op = self.op[pid] * (coin <= self.prob[pid])        # (n, 2); 0 (Identity) where the coin said no
        negative = negative * self._signed_long[op]         # bool * 0/1 long: only signed ops negate
        return op, self.bins[pid], negative

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_images(images)
        return self.apply(images, self.draw(images.shape[0], generator))

    def apply(self, images: torch.Tensor, draws: tuple[torch.Tensor, ...],
              dispatch: str | None = None) -> torch.Tensor:
        """Apply :meth:`draw`'s ``(op, bins, negative)`` to uint8 (B, 1, H, W) ``images``.

        No random draw happens here, so the masked dispatch is a pure function that ``torch.compile``
        traces as one graph (explicit generators are not traceable).  ``dispatch`` overrides the
        augmenter's (``"masked"`` to trace it on CPU tensors).
        """
        _check_images(images)
        op, bins, negative = draws
        dispatch = dispatch or self.dispatch
        if dispatch == "grouped" or (dispatch == "auto" and images.device.type == "cpu"):
            x = images
            for s in range(2):
                x = self.grouped_slot(x, op[:, s], bins[:, s], negative[:, s])
            return x
        # both slots on int64 pixel values, converted once on the way in and once on the way out
        b, _, h, w = images.shape
        pix = images.reshape(b, h * w).long()
        for s, (o, m, n) in enumerate(zip(op.unbind(1), bins.unbind(1), negative.unbind(1))):
            pix = self.masked_slot(pix, o, m, n, h, w, self.slot_ops[s])
        return pix.to(torch.uint8).view(b, 1, h, w)

    def _batch_constants(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """arange(b), and torchvision's sharpness kernel times 13 ((1, 1, 1), (1, 5, 1), (1, 1, 1))
        for ``b`` channels (b, 1, 3, 3) float32."""
        if b not in self._per_batch:
            k = torch.ones(3, 3, device=self.device)
            k[1, 1] = 5.0
            self._per_batch[b] = torch.arange(b, device=self.device), k.expand(b, 1, 3, 3).contiguous()
        return self._per_batch[b]

    def masked_slot(self, pix: torch.Tensor, op: torch.Tensor, bins: torch.Tensor, negative: torch.Tensor,
                    height: int, width: int, present: frozenset = frozenset(OPS)) -> torch.Tensor:
        """One slot of the masked dispatch: int64 pixel values (B, H*W) in 0..255 -> the same after
        each sample's op (``op``/``bins``/``negative``: (B,) indices).  ``present``: the op names
        that may occur; stages for none of them are skipped.

        * warp: one ``gather`` of the zero-padded pixels through the sample's ``warp`` index;
        * pointwise: each sample's 256-entry table is picked among the static one (identity for
          non-pointwise ops) and those built from statistics (Contrast from the mean; AutoContrast
          and Equalize from one ``scatter_add`` histogram and its cumulative sum), all (B, 256);
          then one ``gather`` maps every pixel;
        * Sharpness: torchvision's 3x3 smoothing as one ``conv2d`` of integer weights and the blend
          ``x + (blur - x) * sharp``, ``sharp`` 0 on the border and for the samples of other ops.

        Each stage is the identity for the samples of the others, so chaining them applies every
        sample's one op with no ``torch.where`` between full batches.
        """
        b, n = pix.shape
        idx = (op, bins, negative)
        t = self.tables(height, width)
        if present & _GEOMETRIC_SET:
            pix = F.pad(pix, (0, 1)).gather(1, t["warp"][idx])           # pad: the fill pixel
        lut_ops = present & _POINTWISE_SET
        if lut_ops:
            cands = [t["lutf"][idx]]                                       # (B, 256) float32
            vf = t["vf"]
            if "Contrast" in lut_ops:                                      # as contrast_px
                # float32 mean times float64 -m, plus v * ratio: in float64 (addcmul promotes) the
                # product is exact, so the one cast is _fma's single rounding
                mean = pix.mean(1, keepdim=True, dtype=torch.float32)
                cands.append(torch.addcmul(t["vr"][idx], mean, t["negm"][idx]).float())
            if lut_ops & {"AutoContrast", "Equalize"}:
                hist = torch.zeros(b, 256, dtype=torch.long, device=pix.device)
                hist = hist.scatter_add_(1, pix, t["ones"].expand(b, n))
                cum = hist.cumsum(1)
                below = cum < n                                            # values below the max
                if "AutoContrast" in lut_ops:                              # as autocontrast_px
                    lo = (cum == 0).sum(1, keepdim=True)                   # smallest value present
                    d = below.sum(1, keepdim=True) - lo                    # largest - smallest
                    cands.append((vf - lo * (d != 0)) / t["inv"][d])
                if "Equalize" in lut_ops:                                  # as equalize_lut
                    rest = (cum * below).amax(1, keepdim=True)             # pixels below the max
                    half, step = t["eq"][rest].unbind(-1)
                    eq = torch.div(cum - hist + half, step, rounding_mode="floor")
                    cands.append(torch.where(rest < 255, vf, eq))          # step 0: unchanged
            if len(cands) == 1:
                lut = cands[0]
            else:
                kind = self._lut_kind[lut_ops & _STAT_SET][op]
                lut = torch.stack(cands, dim=1)[self._batch_constants(b)[0], kind]
            pix = lut.clamp_(0, 255).long().gather(1, pix)
        if "Sharpness" in present:                                        # as sharpen
            # Integer pixels: the 3x3 sums are integers < 2^24, exact in float32 in any order (and
            # under TF32, which holds them exactly), and S / 13 is never within 1/26 of a
            # half-integer, so the rounded blur is exact.  The batch as the channels of one image:
            # a depthwise conv.
            x = pix.view(1, b, height, width).float()
            blur = F.conv2d(x, self._batch_constants(b)[1], padding=1, groups=b).div_(13).round_()
            # float32 operands, float64 factor: addcmul computes in float64, where the product and
            # the sum are exact, so the one cast below is sharpen's single rounding.
            x = torch.addcmul(x, blur - x, t["sharp"][idx])                 # factor (B, H, W)
            pix = x.float().clamp_(0, 255).long().view(b, n)
        return pix

    def grouped_slot(self, x: torch.Tensor, op: torch.Tensor, bins: torch.Tensor,
                     negative: torch.Tensor) -> torch.Tensor:
        """One slot of the grouped dispatch on uint8 (B, 1, H, W) ``x``: the same result as
        :meth:`masked_slot`, each op run only on the samples that drew it.

        Samples are sorted by group (``_GROUPS``; one host read of the group sizes), each group is
        gathered (``index_select``), transformed with the per-sample kernels and written back
        (``index_copy_``).  The pointwise groups are adjacent in the sort, so they share one
        gathered batch, one int32 index of its pixels into their flattened tables (also read by the
        ``bincount`` histogram) and one table lookup.  A device sync off the CPU.
        """
        b, _, h, w = x.shape
        key = self._group_key[op]
        counts = torch.bincount(key, minlength=len(_GROUPS)).tolist()
        if counts[0] == b:
            return x
        order = torch.argsort(key, stable=True)
        op_s, bins_s, neg_s = op[order], bins[order], negative[order]
        start = [0]
        for n in counts:
            start.append(start[-1] + n)
        span = {g: (start[i], start[i + 1]) for i, g in enumerate(_GROUPS)}
        t = self.tables(h, w)
        out = x.clone()

        def mag(lo: int, hi: int) -> torch.Tensor:
            return _signed(t["mag"], op_s[lo:hi], bins_s[lo:hi], neg_s[lo:hi])

        lo, hi = span["geometric"]
        if hi > lo:
            idx = order[lo:hi]
            theta = t["theta"][op_s[lo:hi], bins_s[lo:hi], neg_s[lo:hi]]
            out.index_copy_(0, idx, warp_nearest(x.index_select(0, idx), theta, t["grid"]))

        lo, hi = span["lut"][0], span["equalize"][1]          # all pointwise groups, adjacent
        if hi > lo:
            idx = order[lo:hi]
            n = hi - lo
            xs = x.index_select(0, idx)
            # pixel -> row of the flattened (n * 256) table, in int32 (half the traffic of an int64
            # index): the table lookup and the histograms both read it
            offset = torch.arange(0, n * 256, 256, device=x.device, dtype=torch.int32).view(n, 1, 1)
            pix = xs.reshape(n, 1, -1) + offset                                     # (n, 1, H*W) int32
            lut = t["lut"][op_s[lo:hi], bins_s[lo:hi], neg_s[lo:hi]].unsqueeze(1)   # (n, 1, 256)
            v = t["v"]
            a, z = span["contrast"]
            if z > a:
                lut[a - lo:z - lo] = contrast_px(v, mag(a, z), grayscale_mean(xs[a - lo:z - lo]))
            a, z = span["autocontrast"][0], span["equalize"][1]
            if z > a:
                base = (a - lo) * 256
                hist = torch.bincount(pix[a - lo:z - lo].reshape(-1) - base, minlength=(z - a) * 256)
                hist = hist.view(z - a, 1, 256)
                m = span["equalize"][0]
                if m > a:
                    lo_v, hi_v = minmax_from_hist(hist[:m - a])
                    lut[a - lo:m - lo] = autocontrast_px(v, lo_v, hi_v)
                if z > m:
                    eq_lut, valid = equalize_lut(hist[m - a:], h * w)
                    part = lut[m - lo:z - lo]
                    lut[m - lo:z - lo] = torch.where(valid, eq_lut, part)
            out.index_copy_(0, idx, lut.reshape(-1).index_select(0, pix.view(-1)).view_as(xs))

        lo, hi = span["sharpness"]
        if hi > lo:
            idx = order[lo:hi]
            out.index_copy_(0, idx, sharpen(x.index_select(0, idx), mag(lo, hi)))
        return out
