"""The forms of matrix product and convolution the pipeline computes, on seeded inputs: what
tests/test_cpu_kernels.py computes in portable and in native mode (each in its own process) to compare."""

from __future__ import annotations


def _conv_grads(torch, conv, x, name: str, out: dict) -> None:
    x = x.requires_grad_()
    y = conv(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    out[f"{name}/out"], out[f"{name}/grad_input"] = y, x.grad
    out[f"{name}/grad_weight"] = conv.weight.grad
    if conv.bias is not None:
        out[f"{name}/grad_bias"] = conv.bias.grad


def cases(torch) -> dict:
    g = torch.Generator().manual_seed(0)
    a, b, c = torch.randn(64, 784, generator=g), torch.randn(784, 128, generator=g), torch.randn(128, generator=g)
    out = {
        "mm": a @ b, "mm_transposed": b.t() @ a.t(), "addmm": torch.addmm(c, a, b),
        "addmm_scaled": torch.addmm(c, a, b, beta=0.5, alpha=-2.0), "addmm_beta0": torch.addmm(c * float("nan"), a, b, beta=0),
        "mm_misaligned": torch.randn(4097, generator=g)[1:].reshape(64, 64) @ b[:64, :64],
        "bmm": torch.bmm(a.view(4, 16, 784), b.expand(4, 784, 128)),
        "baddbmm": torch.baddbmm(c.view(1, 1, 128), a.view(4, 16, 784), b.expand(4, 784, 128)),
        "mv": torch.mv(a, b[:, 0]), "addmv": torch.addmv(a[:, 0], a, b[:, 0]), "dot": torch.dot(a[0], b[:, 0]),
        "mm_float64": a.double() @ b.double(), "cdist": torch.cdist(a[:30], a[30:]),
        "mm_int": torch.arange(12).view(3, 4) @ torch.arange(8).view(4, 2),
    }
    torch.manual_seed(1)  # module initialisations draw from the global generator
    linear = torch.nn.Linear(784, 128)
    x = a.clone().requires_grad_()
    linear(x).pow(2).sum().backward()
    out["linear/grad_input"], out["linear/grad_weight"], out["linear/grad_bias"] = x.grad, linear.weight.grad, linear.bias.grad
    nn = torch.nn
    _conv_grads(torch, nn.Conv2d(32, 64, 3, padding=1), torch.randn(37, 32, 14, 14), "conv3x3", out)
    _conv_grads(torch, nn.Conv2d(1, 32, 3, padding=1, bias=False), torch.randn(20, 1, 28, 28), "conv_first", out)
    _conv_grads(torch, nn.Conv2d(64, 128, 4, 2, 1).to(memory_format=torch.channels_last),
                torch.randn(20, 64, 14, 14).to(memory_format=torch.channels_last), "conv_strided_channels_last", out)
    _conv_grads(torch, nn.ConvTranspose2d(128, 64, 4, 2, 1), torch.randn(20, 128, 7, 7), "transposed", out)
    _conv_grads(torch, nn.ConvTranspose2d(16, 8, 3, 2, 1, output_padding=1), torch.randn(5, 16, 7, 7), "transposed_padded", out)
    _conv_grads(torch, nn.Conv2d(6, 12, 4, 2, 1, groups=3), torch.randn(20, 6, 14, 14), "grouped", out)
    _conv_grads(torch, nn.ConvTranspose2d(6, 9, 4, 2, 1, groups=3), torch.randn(20, 6, 7, 7), "grouped_transposed", out)
    frozen = nn.Conv2d(8, 4, 3)
    with torch.no_grad():
        out["conv_no_grad"] = frozen(torch.randn(3, 8, 9, 9))
    return out


def inference_cases(torch) -> dict:
    """A DCGAN-shaped generator sampled under torch.inference_mode(), as the pipeline samples: the
    convolutions' pool threads must write the caller's inference tensors."""
    torch.manual_seed(2)
    nn = torch.nn
    net = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 3, 3, padding=1)).eval()
    with torch.inference_mode():
        return {"sampled_under_inference_mode": net(torch.randn(37, 64, 7, 7))}
