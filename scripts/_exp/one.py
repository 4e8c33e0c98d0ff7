import torch, functools
from flowhn.kernels.testing import scan_inputs
from flowhn.kernels.triton_scan import selective_scan_triton
inp = scan_inputs(8, 1536, 1024, 16, dtype=torch.float32, device="cuda")
t = {k: v.requires_grad_() for k, v in inp.items() if isinstance(v, torch.Tensor)}
f = functools.partial(selective_scan_triton, block_d=16, chunk=32, num_warps=1, delta_softplus=True)
for _ in range(2):
    out = f(**t); out.backward(torch.ones_like(out))
torch.cuda.synchronize()
