"""Activation offload: refused off CUDA; on a GPU, the same gradients and less device memory."""

import pytest
import torch

from slimtrain.activations import offload_activations
from slimtrain.errors import UserError
from tests.helpers import tiny_llama


def test_refused_on_cpu_with_a_clear_message():
    with pytest.raises(UserError, match="on cpu they are already in host memory"):
        offload_activations(tiny_llama(), "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_gradients_equal_and_device_bytes_drop():
    from slimtrain.memory.measure import saved_tensor_bytes

    model = tiny_llama(layers=4).cuda()
    ids = torch.randint(0, 256, (8, 128), device="cuda")

    def grads(lever):
        model.zero_grad(set_to_none=True)
        if lever is None:
            with saved_tensor_bytes(model) as saved:
                loss = model(input_ids=ids, labels=ids).loss
        else:
            with lever, saved_tensor_bytes(model, lever) as saved:
                loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.cuda.synchronize()
        return {n: p.grad.clone() for n, p in model.named_parameters()}, saved["bytes"]

    ref, ref_bytes = grads(None)
    got, got_bytes = grads(offload_activations(model, "cuda", min_bytes=1))
    for name in ref:
        assert torch.equal(got[name], ref[name]), name
    assert got_bytes < ref_bytes / 2
