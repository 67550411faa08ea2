"""Proof, while an image builds, that its torch stack belongs together; exit 1 otherwise.

    python docker/check-stack.py VARIANT TORCH TORCHVISION    (VARIANT: cpu or cuda)

Run as the last step of each image the Dockerfile builds, so a torchvision built for another
torch (its compiled ops do not load: "operator torchvision::nms does not exist") fails the build
instead of becoming an image. Checked: torch and torchvision have the pinned public versions;
torchvision's compiled ops run (`torchvision.ops.nms` on three boxes keeps boxes 0 and 2); torch
is the variant's build (cpu: no CUDA; cuda: a CUDA build, with triton and a C compiler); both
have a C++ compiler and Python's headers for compiled steps; timm builds and runs a ResNet-18;
optuna (goodfit search) and goodfit import. It needs no GPU and no network. With --compile it
also compiles a small function with torch.compile on the CPU and checks its values against
eager's (the Dockerfile passes it: tens of seconds); with --gpu it runs one compiled bf16
channels_last training step on the GPU (docker/build-local.sh runs that where a GPU is present).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile


def check(variant: str, want_torch: str, want_vision: str, gpu: bool = False,
          compiled: bool = False) -> list[str]:
    """The problems found, one line each; [] when the stack is whole."""
    problems: list[str] = []
    try:
        import torch
        import torchvision
        from torchvision.ops import nms
    except Exception as e:  # noqa: BLE001 - a broken pair fails in many ways; name it
        return [f"torch/torchvision do not import together: {type(e).__name__}: {e}"]
    for name, have, want in (("torch", torch.__version__, want_torch),
                             ("torchvision", torchvision.__version__, want_vision)):
        if have.split("+")[0] != want.split("+")[0]:
            problems.append(f"{name} {have} installed, {want} pinned")
    try:
        boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
        keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
        if keep != [0, 2]:
            problems.append(f"torchvision.ops.nms kept {keep}, expected [0, 2]")
    except Exception as e:  # noqa: BLE001
        problems.append(f"torchvision's compiled ops do not run: {type(e).__name__}: {e}")
    if variant == "cpu" and torch.version.cuda is not None:
        problems.append(f"cpu image: torch {torch.__version__} is a CUDA {torch.version.cuda} build")
    if variant == "cuda":
        if torch.version.cuda is None:
            problems.append(f"cuda image: torch {torch.__version__} has no CUDA")
        try:
            import triton  # noqa: F401 - torch.compile's GPU code generator
        except ImportError as e:
            problems.append(f"cuda image: triton does not import ({e})")
        if not any(shutil.which(c) for c in ("cc", "gcc")):
            problems.append("cuda image: no C compiler (triton builds its launcher with one)")
    if not shutil.which(os.environ.get("CXX") or "g++"):
        problems.append(f"{variant} image: no C++ compiler (torch.compile on the CPU builds C++)")
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        problems.append(f"{variant} image: no Python.h in {include} (compiled steps need it)")
    try:
        import timm
        model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
        with torch.no_grad():
            shape = tuple(model(torch.zeros(1, 3, 32, 32)).shape)
        if shape != (1, 3):
            problems.append(f"timm resnet18 returned shape {shape}, expected (1, 3)")
    except Exception as e:  # noqa: BLE001
        problems.append(f"timm does not work: {type(e).__name__}: {e}")
    for module in ("optuna", "goodfit_cli"):
        try:
            __import__(module)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{module} does not import: {type(e).__name__}: {e}")
    if compiled and not problems:
        problems += cpu_compiled()
    if gpu and not problems:
        problems += gpu_step()
    return problems


def cpu_compiled() -> list[str]:
    """A function compiled by torch.compile on the CPU (inductor's C++) gives eager's values."""
    import torch
    try:
        x = torch.linspace(-2.0, 2.0, 64)
        got = torch.compile(lambda t: torch.sin(t) * 2 + t.relu())(x)
        if not torch.allclose(got, torch.sin(x) * 2 + x.relu()):
            return ["--compile: the compiled CPU function's values differ from eager's"]
    except Exception as e:  # noqa: BLE001
        return [f"--compile: torch.compile on the CPU failed: {type(e).__name__}: {e}"]
    return []


def inductor_folder() -> str:
    """Where torch's inductor keeps its files by default (torch/_inductor/runtime/
    cache_dir_utils.py): read before torch is imported, since importing it creates the folder."""
    import getpass
    import tempfile
    return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")


def gpu_step() -> list[str]:
    """One compiled bf16 channels_last training step of a small CNN on the GPU."""
    import torch
    from torch import nn
    if not torch.cuda.is_available():
        return ["--gpu: torch sees no CUDA device"]
    try:
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Linear(16, 10)).cuda().to(memory_format=torch.channels_last)
        step = torch.compile(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(8, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (8,), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(step(x), y)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        if not torch.isfinite(loss):
            return [f"--gpu: the compiled step's loss is {loss.item()}"]
    except Exception as e:  # noqa: BLE001
        return [f"--gpu: compiled bf16 channels_last step failed: {type(e).__name__}: {e}"]
    return []


def main(argv: list[str]) -> int:
    gpu, compiled = "--gpu" in argv, "--compile" in argv
    args = [a for a in argv if a not in ("--gpu", "--compile")]
    if len(args) != 3 or args[0] not in ("cpu", "cuda"):
        print("usage: check-stack.py cpu|cuda TORCH_VERSION TORCHVISION_VERSION [--compile] "
              "[--gpu]", file=sys.stderr)
        return 2
    # --compile: inductor's files (its cache, ~150 MB of precompiled headers) go to a folder
    # of the check's own, removed at the end, and the default folder too when the check made
    # it: nothing of the check stays in the image, nothing of a user's cache is touched
    folder, made = inductor_folder(), not os.path.exists(inductor_folder())
    with tempfile.TemporaryDirectory(prefix="check-stack-") as cache:
        if compiled:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            problems = check(*args, gpu=gpu, compiled=compiled)
        finally:
            if compiled and made:
                shutil.rmtree(folder, ignore_errors=True)
    for p in problems:
        print(f"check-stack: {p}", file=sys.stderr)
    if problems:
        return 1
    import torch
    import torchvision
    print(f"check-stack: ok: {args[0]} image, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), torchvision {torchvision.__version__}, nms ran, timm ran"
          + (", compiled CPU function ran" if compiled else "")
          + (", compiled bf16 step on the GPU ran" if gpu else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
