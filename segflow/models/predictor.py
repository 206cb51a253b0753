"""Runs a loaded model on batches of normalized patches.

The predictor owns everything between "a batch of patches" and "logits of
the same size": device placement, padding to the model's output stride,
reorientation for models that want a canonical orientation (inverted
exactly), 2-D models on volumes slice by slice, AMP on GPUs, and flip
test-time augmentation. One predictor per process is cached, so a Dask worker
loads its model once, and forward passes are serialised by a lock: on a GPU
one batch at a time, on a CPU one forward using every core.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import EllipsisType

import torch
import torch.nn.functional as F

from segflow.errors import ConfigError
from segflow.io.orientation import AxisTransform

TensorFn = Callable[[torch.Tensor], torch.Tensor]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; explicit names are checked."""
    name = device.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for but no CUDA GPU is available; use --device cpu"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' was asked for but is not available; use --device cpu")
    return dev


def pad_to_multiple(
    x: torch.Tensor, multiple: int, spatial: int
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the last ``spatial`` axes at their far end to a multiple; return the old sizes."""
    sizes = tuple(x.shape[-spatial:])
    pad: list[int] = []
    for size in reversed(sizes):
        pad += [0, (-size) % multiple]
    if any(pad):
        x = F.pad(x, pad)
    return x, sizes


def crop_to(x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    index: tuple[slice | EllipsisType, ...] = (Ellipsis, *(slice(0, s) for s in sizes))
    return x[index]


def to_model_axes(x: torch.Tensor, transform: AxisTransform) -> torch.Tensor:
    """Turn the trailing spatial axes of ``x`` from file voxel order to the model's orientation."""
    lead = x.ndim - transform.ndim
    x = x.permute(*range(lead), *(lead + p for p in transform.perm))
    dims = [lead + i for i, f in enumerate(transform.flip) if f]
    return x.flip(dims) if dims else x


def from_model_axes(x: torch.Tensor, transform: AxisTransform) -> torch.Tensor:
    """Undo :func:`to_model_axes` exactly (only flips and a transpose)."""
    return to_model_axes(x, transform.inverse())


class Predictor:
    """Turns ``(N, C, *patch)`` float32 batches into ``(N, K, *patch)`` float32 logits.

    Logits come back to the CPU unless the caller keeps them on the device
    (``on_device``) to blend them there. A batch that runs a GPU out of memory
    is split in halves until it fits (one warning line), and later batches
    are split the same way.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        num_classes: int,
        output_stride: int = 1,
        device: str = "auto",
        amp: bool = True,
        tta: bool = False,
        squeeze_axis: int | None = None,
        axis_order: AxisTransform | None = None,
        threads: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        # .to() moves a module in place: copy it first, so a caller's module stays on the CPU
        on_cpu = self.device.type == "cpu"
        self.module = module.eval() if on_cpu else copy.deepcopy(module).eval().to(self.device)
        self.num_classes = num_classes
        self.output_stride = max(int(output_stride), 1)
        self.amp = amp and self.device.type == "cuda"
        self.tta = tta
        self.squeeze_axis = squeeze_axis
        self.axis_order = axis_order
        self.threads = threads or _default_threads()
        # a GPU runs one batch at a time; CPU forwards may run side by side, each on
        # its share of the cores (see ``threads`` in __call__)
        self._lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if self.device.type != "cpu" else contextlib.nullcontext()
        )
        self._active = 0
        self._active_lock = threading.Lock()
        self.max_batch: int | None = None  # set when a batch did not fit the device

    def __call__(self, batch: torch.Tensor, *, on_device: bool = False) -> torch.Tensor:
        """Logits of ``batch``, on the CPU, or left on the model's device when ``on_device``."""
        return self.finish(self.launch(batch), batch.ndim - 2, on_device=on_device)

    def launch(self, batch: torch.Tensor) -> torch.Tensor:
        """The device's part of a call: the model's output, in the model's axes and on its device.

        Kept apart from ``finish`` so the thread that feeds a device does only
        the device's work (see segflow.engine.device_queue).
        """
        if self.squeeze_axis is not None:
            # a 2-D model on a volume: the patch is one slice thick along this axis
            batch = batch.squeeze(2 + self.squeeze_axis)
        if self.axis_order is not None:
            batch = to_model_axes(batch, self.axis_order).contiguous()
        return self._forward_tta(batch)

    def finish(
        self,
        logits: torch.Tensor,
        spatial: int,
        *,
        on_device: bool = False,
        contiguous: bool = True,
    ) -> torch.Tensor:
        """``launch``'s output as logits of the batch, in its axes, where asked; ``contiguous``
        False leaves a model's own layout (channels-last, say) to a caller that reads any."""
        if not on_device:
            logits = logits.cpu()
        if self.axis_order is not None:
            logits = from_model_axes(logits, self.axis_order)
        if self.squeeze_axis is not None:
            logits = logits.unsqueeze(2 + self.squeeze_axis)
        assert logits.ndim == spatial + 2
        return logits.contiguous() if contiguous else logits

    def _forward_tta(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.tta:
            return self._forward_fitting(batch)
        spatial_dims = list(range(2, batch.ndim))
        total = self._forward_fitting(batch)
        for dim in spatial_dims:
            total += self._forward_fitting(batch.flip(dim)).flip(dim)
        return total / (len(spatial_dims) + 1)

    def _forward_fitting(self, batch: torch.Tensor) -> torch.Tensor:
        """The forward in parts of at most ``max_batch`` patches, halved on CUDA out-of-memory.

        A single patch goes through as a pair (itself twice): many kernels take
        another path for a batch of one, which rounds differently, and a patch's
        logits must not depend on the batch it fell into (a resumed run, or a
        task that predicts a neighbour's patch, batches patches differently).
        """
        if len(batch) == 1 and self.max_batch != 1:
            return self._forward_fitting(torch.cat([batch, batch]))[:1]
        while True:
            limit = self.max_batch or len(batch)
            try:
                parts = [self._forward(batch[i : i + limit]) for i in range(0, len(batch), limit)]
                return parts[0] if len(parts) == 1 else torch.cat(parts)
            except torch.cuda.OutOfMemoryError:
                if limit <= 1:
                    raise
                self.max_batch = limit // 2
                torch.cuda.empty_cache()
                warnings.warn(
                    f"CUDA out of memory with {limit} patches per forward; "
                    f"continuing with {self.max_batch}",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        spatial = batch.ndim - 2
        padded, sizes = pad_to_multiple(batch, self.output_stride, spatial)
        with self._lock, self._share_of_cores() as threads:
            outer_threads = torch.get_num_threads()
            torch.set_num_threads(threads)  # per calling thread under OpenMP
            with (
                torch.inference_mode(),
                torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp),
            ):
                out = self.module(padded.to(self.device, non_blocking=True))
            if isinstance(out, dict | list | tuple):
                out = _first_tensor(out)
            out = out.float()
            torch.set_num_threads(outer_threads)
        if out.shape[1] != self.num_classes:
            raise ConfigError(
                f"the model produced {out.shape[1]} channels but its metadata lists "
                f"{self.num_classes} classes; fix the model file's classes"
            )
        if tuple(out.shape[2:]) != tuple(padded.shape[2:]):
            out = F.interpolate(out, size=padded.shape[2:], mode="nearest")
        return crop_to(out, sizes)

    @contextlib.contextmanager
    def _share_of_cores(self) -> Iterator[int]:
        """Cores for this forward: all of them alone, an equal share when forwards overlap.

        OpenMP teams that compete for the same cores make every kernel several
        times slower than one thread per core would.
        """
        with self._active_lock:
            self._active += 1
            threads = max(1, self.threads // self._active)
        try:
            yield threads
        finally:
            with self._active_lock:
                self._active -= 1


def _first_tensor(out: object) -> torch.Tensor:
    if isinstance(out, dict):
        out = out.get("out", next(iter(out.values())))
    if isinstance(out, list | tuple):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ConfigError("the model returned no tensor")
    return out


def _default_threads() -> int:
    """Cores for a forward: SEGFLOW_TORCH_THREADS, else this machine's share of the cores.

    Dask worker processes set OMP_NUM_THREADS=1, so a model task takes the cores it
    was given; two workers on one machine each take half, instead of both taking all.
    """
    configured = int(os.environ.get("SEGFLOW_TORCH_THREADS", 0))
    return configured or max(1, (os.cpu_count() or 1) // _dask_workers_on_this_host())


def _dask_workers_on_this_host() -> int:
    """How many Dask workers share this machine with the one running us (1 outside one)."""
    if "distributed" not in sys.modules:  # not a worker; and no import for the common case
        return 1
    from distributed import get_worker
    from distributed.utils import get_ip

    try:
        worker = get_worker()
    except ValueError:
        return 1
    workers = worker.client.scheduler_info(n_workers=-1)["workers"].values()
    hosts = [w.get("host") for w in workers]
    here = worker.address.split("://")[-1].rsplit(":", 1)[0]
    return max(1, hosts.count(here) or hosts.count(get_ip()))  # type: ignore[no-untyped-call]


_CACHE: dict[tuple[object, ...], Predictor] = {}
_CACHE_LOCK = threading.Lock()


def cached_predictor(key: tuple[object, ...], build: Callable[[], Predictor]) -> Predictor:
    """One predictor per process and key: the model is loaded once per Dask worker."""
    with _CACHE_LOCK:
        predictor = _CACHE.get(key)
        if predictor is None:
            predictor = build()
            _CACHE[key] = predictor
        return predictor


def model_cache_key(path: Path, sha256: str, **options: object) -> tuple[object, ...]:
    return (str(path), sha256, *sorted(options.items()))
