"""The pixel classifier: ATen's pointwise kernel, switched on safely across threads."""

from __future__ import annotations

import threading

import torch

from segflow.models.pixel import PixelClassifier, _aten_convolutions


def test_output_matches_the_plain_convolutions():
    torch.manual_seed(0)
    model = PixelClassifier(3, 4, hidden=(8,)).eval()
    x = torch.randn(2, 3, 17, 9)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), model.net(x))
    assert torch._C._get_mkldnn_enabled()  # restored afterwards


def test_oneDNN_stays_off_until_the_last_overlapping_forward_ends():
    first_inside, release_first = threading.Event(), threading.Event()

    def first() -> None:
        with _aten_convolutions():
            first_inside.set()
            release_first.wait(5)

    worker = threading.Thread(target=first)
    worker.start()
    first_inside.wait(5)
    with _aten_convolutions():
        release_first.set()
        worker.join(5)  # the first forward has ended while this one still runs
        assert not torch._C._get_mkldnn_enabled()
    assert torch._C._get_mkldnn_enabled()
