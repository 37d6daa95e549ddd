"""Measures the domain shift of a data set: a plain segmenter trained on each source domain alone.

    python -m benchmarks.domain_shift [--data DIR] [--tile 64] [--steps 500] [--sources ABCDEF]

Without --data the default synthetic set is written to (or reused from) $TMPDIR/sammed_fast_synthetic. For each
source, a small U-Net (plain ERM: no augmentation, no selection on target data; the last step is
evaluated) is trained on the source's train split and scored by 3D Dice per volume on the source's
test split and on every volume of the other domains. Prints the source x target table (rows:
trained on; the diagonal is the source test split) as markdown.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sammed_fast.data import DOMAINS, SliceDataset, VolumeAssembler, load_domain, split_source
from sammed_fast.data.synthetic import ensure_synthetic
from sammed_fast.metrics import dice_per_volume, summarise


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """Three-level U-Net, (B, 1, t, t) -> logits (B, 1, t, t); t divisible by 8."""

    def __init__(self, *, width: int = 16):
        super().__init__()
        w = width
        self.enc = nn.ModuleList([_block(1, w), _block(w, 2 * w), _block(2 * w, 4 * w)])
        self.mid = _block(4 * w, 8 * w)
        self.up = nn.ModuleList([nn.ConvTranspose2d(c, c // 2, 2, stride=2)
                                 for c in (8 * w, 4 * w, 2 * w)])
        self.dec = nn.ModuleList([_block(8 * w, 4 * w), _block(4 * w, 2 * w), _block(2 * w, w)])
        self.head = nn.Conv2d(w, 1, 1)

    def forward(self, x):
        skips = []
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.mid(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], 1))
        return self.head(x)


def _loss(logits, target):
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    soft_dice = 1 - (2 * inter + 1) / (prob.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + soft_dice


def train(volumes, *, tile: int, steps: int, batch: int, seed: int, width: int = 16) -> TinyUNet:
    torch.manual_seed(seed)
    data = SliceDataset(volumes, tile_size=tile)
    loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    model = TinyUNet(width=width)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    step = 0
    bar = tqdm(total=steps, desc="train", unit="step", leave=False)
    while step < steps:
        for item in loader:
            loss = _loss(model(item["image"]), item["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            if step == steps:
                break
    bar.close()
    return model


@torch.no_grad()
def evaluate(model, volumes, *, tile: int) -> list[float]:
    """3D Dice per volume at the volumes' own resolution (probabilities resized, then > 0.5)."""
    model.eval()
    data = SliceDataset(volumes, tile_size=tile)
    asm = VolumeAssembler(volumes)
    for item in DataLoader(data, batch_size=64):
        asm.add(torch.sigmoid(model(item["image"])), item["domain"], item["case_id"],
                item["slice_index"])
    return [float(dice_per_volume(pred > 0.5, torch.from_numpy(vol.label)))
            for vol, pred in asm.items(mode="bilinear")]


def run(root: Path, *, sources: str, tile: int, steps: int, batch: int, seed: int) -> str:
    volumes = {d: load_domain(root, d) for d in DOMAINS}
    letters = list(DOMAINS)
    lines = ["| trained on \\ Dice on | " + " | ".join(letters) + " | target avg |",
             "|---|" + "---|" * (len(letters) + 1)]
    for src in sources:
        t0 = time.perf_counter()
        split = split_source(volumes[src])
        model = train(split["train"], tile=tile, steps=steps, batch=batch, seed=seed)
        scores = {d: evaluate(model, split["test"] if d == src else volumes[d], tile=tile)
                  for d in letters}
        summary = summarise(scores, source=src)
        cells = [f"**{100 * summary.mean[d]:.1f}**" if d == src else f"{100 * summary.mean[d]:.1f}"
                 for d in letters]
        lines.append(f"| {src} | " + " | ".join(cells) + f" | {100 * summary.target_mean:.1f} |")
        print(lines[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--sources", default="".join(DOMAINS))
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a shared 2-core machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = args.data or ensure_synthetic(Path(tempfile.gettempdir()) / "sammed_fast_synthetic")
    table = run(root, sources=args.sources.upper(), tile=args.tile, steps=args.steps,
                batch=args.batch, seed=args.seed)
    print(table)
    return table


if __name__ == "__main__":
    main()
