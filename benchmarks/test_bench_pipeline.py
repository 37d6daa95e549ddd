"""The whole second stage: coarse probabilities -> box -> SAM, and decoder training.

* Inference (group "pipeline inference: ..."): slices per second of the method's own
  ``Predictor`` (the object evaluation and ``predict`` use) from coarse probabilities on: box
  prompts (``BoxPrompter``, filter at d4) -> canvas embeddings -> box-prompted decode -> masks,
  merged 2x2 (ours, mode "merge") against the same Predictor over a TiledSam that feeds one slice
  per SAM input resized to the canvas size (the MedSAM way, mode "resize"): the same SAM, the same
  slices, the same boxes. The coarse segmenter itself is not timed (it costs the same in both).
  The encoder runs on the Predictor's chunks of canvases per call. The checked call also measures the share of time spent outside the SAM
  image encoder and the peak memory (CUDA: max_memory_allocated; CPU: peak resident set size
  above the start, sampled every 2 ms from /proc/self/statm, plus ru_maxrss).
* Decoder training (group "decoder epoch: ..."): one epoch of mask-decoder fine-tuning (Adam,
  BCE, batches of whole canvases) reading the embedding cache (ours) against recomputing the frozen
  encoder at every step. Both see the same canvases, so they are checked to train on the same
  embeddings before timing; building the cache is timed once and recorded in extra_info.

CPU: the compact SAM (random weights: timing only). GPU: vit_b (random weights) with the encoder
in bf16 autocast, as TiledSam runs it on CUDA.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from inputs import PROB_THRESHOLD, coarse_probs, z_scored_slices
from sammed_fast import ops
from sammed_fast.method.predictor import Predictor
from sammed_fast.method.prompts import BoxPrompter
from sammed_fast.models import TiledSam, build_sam, freeze_for_decoder_training


@dataclasses.dataclass(frozen=True)
class Setup:
    device: str
    variant: str  # SAM variant
    tile: int  # slice side t; the canvas is 2t
    slices: int  # slices per inference call
    epoch_slices: int  # slices per training epoch
    canvases_per_call: int  # encoder batch, in canvases
    batch_canvases: int = 4  # training batch, in canvases (4 x 4 = 16 slices, the paper's batch)

    @property
    def name(self) -> str:
        return f"{self.device} {self.variant} t{self.tile}"


QUICK_CPU = Setup("cpu", "compact", 64, 16, 16, 16, batch_canvases=2)
FULL_CPU = Setup("cpu", "compact", 128, 64, 32, 16)
GPU = Setup("cuda", "vit_b", 512, 64, 64, 8)
SETUPS = [
    pytest.param(QUICK_CPU, id="cpu-compact-t64"),
    pytest.param(FULL_CPU, id="cpu-compact-t128", marks=pytest.mark.full),
    pytest.param(GPU, id="cuda-vit_b-t512", marks=pytest.mark.cuda),
]
MODES = {"merge": 2, "resize": 1}  # mode -> grid
MIN_ROUNDS = 3  # whole-pipeline calls take seconds on a CPU; one round would be all noise
_sams: dict[Setup, torch.nn.Module] = {}


def sam_for(setup: Setup):
    if setup not in _sams:
        torch.manual_seed(0)
        canvas = 2 * setup.tile if setup.variant == "compact" else None
        _sams[setup] = build_sam(setup.variant, canvas_size=canvas).to(setup.device)
    return _sams[setup]


def tiled(setup: Setup, mode: str) -> TiledSam:
    return TiledSam(sam=sam_for(setup), tile_size=setup.tile, grid=MODES[mode], mode=mode)


class EncoderClock:
    """Seconds spent inside the SAM image encoder while active (synchronising a CUDA device)."""

    def __init__(self, model: TiledSam, device: str, sync) -> None:
        self.encoder, self.device, self.sync = model.sam.image_encoder, device, sync
        self.seconds = 0.0

    def __enter__(self):
        def before(*_):
            self.sync(self.device)
            self._start = time.perf_counter()

        def after(*_):
            self.sync(self.device)
            self.seconds += time.perf_counter() - self._start

        self._handles = [self.encoder.register_forward_pre_hook(before), self.encoder.register_forward_hook(after)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


class PeakRss(contextlib.AbstractContextManager):
    """Peak resident set size above the value at entry, sampled every 2 ms (Linux /proc)."""

    PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.PAGE

    def __enter__(self):
        self.available = os.path.exists("/proc/self/statm")
        self.start = self.peak = self._rss() if self.available else 0
        self._stop = threading.Event()
        if self.available:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    def info(self) -> dict:
        out = {"ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        if self.available:
            out["peak_rss_above_start_mb"] = round((self.peak - self.start) / 2**20, 1)
        return out


def data(setup: Setup, slices: int):
    images = torch.from_numpy(z_scored_slices(slices, setup.tile)).to(setup.device)
    probs = torch.from_numpy(coarse_probs(slices, setup.tile)).to(setup.device)
    return images, probs


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("setup", SETUPS)
def test_pipeline_inference(bench, setup: Setup, mode: str):
    model = tiled(setup, mode)
    predictor = Predictor(segmenter=None, prompter=BoxPrompter(theta1=PROB_THRESHOLD, downscale=4, empty_box="full"),
                          sam=model, device=torch.device(setup.device))
    images, probs = data(setup, setup.slices)
    expected_boxes = ops.boxes_from_probs(probs.cpu(), PROB_THRESHOLD, 4, 4).boxes  # any device agrees
    measured: dict = {}

    def pipeline():
        with torch.inference_mode():
            boxes, keep = predictor.prompter.prompts(predictor.boxes(probs))
            masks = predictor.decode(predictor.embed(images), boxes, keep) > predictor.theta2
        bench.synchronize(setup.device)
        return boxes, masks

    def fn():
        if measured:
            return pipeline()
        # The checked (first) call alone is instrumented: encoder time and peak memory.
        with EncoderClock(model, setup.device, bench.synchronize) as clock, PeakRss() as rss:
            start = time.perf_counter()
            out = pipeline()
            total = time.perf_counter() - start
        measured.update(encoder_s=round(clock.seconds, 4), instrumented_total_s=round(total, 4),
                        outside_encoder_share=round(1 - clock.seconds / total, 4))
        if setup.device == "cpu":
            measured.update(rss.info())
        return out

    def check(out) -> None:
        boxes, masks = out
        torch.testing.assert_close(boxes.cpu(), expected_boxes, rtol=0, atol=0)
        assert masks.shape == (setup.slices, setup.tile, setup.tile) and masks.dtype == torch.bool
        bench.benchmark.extra_info.update(measured)

    role = "ours" if mode == "merge" else "peer"
    targets = dict(target_ratio=3.5, target_peer="best") if mode == "merge" else {}
    if mode == "merge" and setup.device == "cuda":
        targets["target_max_outside_share"] = 0.05
    bench(fn, check=check, min_rounds=MIN_ROUNDS, role=role,
          group=f"pipeline inference: {setup.name}, {setup.slices} slices", device=setup.device,
          op="pipeline", impl=mode, slices=setup.slices, sam=setup.variant, tile=setup.tile,
          canvas=model.canvas_size, **targets)


def relative_error(found: torch.Tensor, expected: torch.Tensor) -> float:
    return float((found.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-12))


@pytest.mark.parametrize("variant", ["cached", "recompute"])
@pytest.mark.parametrize("setup", SETUPS)
def test_decoder_epoch(bench, setup: Setup, variant: str):
    model = tiled(setup, "merge")
    params = freeze_for_decoder_training(model)
    optimiser = torch.optim.Adam(params, lr=1e-4)
    images, probs = data(setup, setup.epoch_slices)
    targets = (probs > PROB_THRESHOLD).float()[:, None]
    boxes = ops.boxes_from_probs(probs, PROB_THRESHOLD, 4, 4).boxes
    g2 = model.tiles_per_canvas
    order = torch.randperm(setup.epoch_slices // g2, generator=torch.Generator().manual_seed(0))
    batches = [(c[:, None] * g2 + torch.arange(g2)).reshape(-1).to(setup.device)
               for c in order.split(setup.batch_canvases)]  # slice indices of whole canvases

    per_call = setup.canvases_per_call * g2
    bench.synchronize(setup.device)
    start = time.perf_counter()
    cache = torch.cat([model.encode(images[s:s + per_call]) for s in range(0, setup.epoch_slices, per_call)])
    bench.synchronize(setup.device)
    cache_build_s = time.perf_counter() - start
    # Both variants train on the same embeddings: the cache equals a recomputation of a batch.
    error = relative_error(model.encode(images[batches[0]]), cache[batches[0][::g2] // g2])
    assert error < (2e-2 if setup.device == "cuda" else 1e-4), f"cached embeddings differ by {error:.2e}"

    def epoch():
        for index in batches:
            if variant == "cached":
                logits = model.decode(cache, boxes[index], tile_index=index)
            else:
                logits = model.decode(model.encode(images[index]), boxes[index])
            loss = F.binary_cross_entropy_with_logits(logits, targets[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        bench.synchronize(setup.device)
        return loss.detach()

    def check(loss) -> None:
        assert torch.isfinite(loss), f"non-finite loss {loss}"

    role = "ours" if variant == "cached" else "peer"
    targets_info = dict(target_ratio=10.0, target_peer="best") if variant == "cached" else {}
    bench(epoch, check=check, min_rounds=MIN_ROUNDS, role=role,
          group=f"decoder epoch: {setup.name}, {setup.epoch_slices} slices", device=setup.device,
          op="decoder_epoch", impl=variant, slices=setup.epoch_slices,
          batch_slices=setup.batch_canvases * g2, sam=setup.variant, tile=setup.tile,
          cache_build_s=round(cache_build_s, 4), embedding_rel_error=float(f"{error:.3g}"), **targets_info)
