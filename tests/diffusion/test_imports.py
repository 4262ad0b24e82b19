"""The diffusion core imports torch only: it works without rdkit, e3nn and torch_geometric."""

import subprocess
import sys

CODE = """
import sys
for name in ("rdkit", "e3nn", "torch_geometric", "torch_scatter"):
    sys.modules[name] = None  # makes `import name` raise ImportError
import confdiff.diffusion as d
for name in d.__all__:
    assert hasattr(d, name), name
blocked = [m for m in sys.modules if m.split(".")[0] in ("rdkit", "e3nn", "torch_geometric", "torch_scatter")
           and sys.modules[m] is not None]
assert not blocked, blocked
import torch
sde = d.SDE(d.VPLinear(), d.Euclidean())
x = sde.prior_sample(torch.zeros(2, 3))
print("ok", tuple(x.shape))
"""


def test_diffusion_imports_without_optional_heavy_dependencies():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ok (2, 3)" in out.stdout


def test_public_names_exported():
    import confdiff.diffusion as d

    for name in ("Schedule", "VPLinear", "VPCosine", "VEGeometric", "SubVP", "LearnableMonotone",
                 "Space", "Euclidean", "ZeroCoM", "Torus", "Product", "SDE", "ProductSDE",
                 "wrap", "wrapped_normal_log_prob", "wrapped_normal_score", "sample_wrapped_normal",
                 "WrappedNormalTable", "fast_wrapped_normal_score", "wrapped_normal_score_norm"):
        assert name in d.__all__ and hasattr(d, name), name
    assert len(set(d.__all__)) == len(d.__all__)
